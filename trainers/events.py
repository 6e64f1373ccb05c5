"""Machine-readable progress: ``<output.dir>/events.jsonl``, one JSON object a line, flushed as written.

Kinds (every line has ``kind`` and ``time``, seconds since the epoch):
  start   step, total                       the run begins (or resumes at ``step``)
  step    step, total, loss, lr, lrs, grad_norm, its   one optimiser step (loss null when skipped)
  sample  step, images (paths)              sample images written
  save    step, adapter, state              an adapter (and state, when one was written) saved
  control step, action                      a "sample" / "save" request of control.json handled
  end     step, status ("done" | "interrupted")
A fresh run (step 0) starts a new file; a resumed run appends to it. Non-finite numbers are written as null.
``NO_EVENTS`` stands in where nothing is written (processes other than the main one, a Trainer outside run()).
"""
from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path
from typing import Any


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventLog:
    def __init__(self, out_dir: Path, total: int, initial: int):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "events.jsonl"
        self.total = total
        self._file = open(self.path, "w" if initial == 0 else "a", encoding="utf-8")
        self._times: collections.deque[float] = collections.deque(maxlen=11)
        self.emit("start", step=initial, total=total)

    def emit(self, kind: str, **fields: Any) -> None:
        if self._file.closed:
            return
        record = {"kind": kind, "time": round(time.time(), 3)}
        record.update({k: _finite(v) for k, v in fields.items()})
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def step(self, step: int, loss: float | None, lrs: dict[str, float], grad_norm: float | None) -> None:
        now = time.time()
        self._times.append(now)
        its = (len(self._times) - 1) / (now - self._times[0]) if len(self._times) > 1 and now > self._times[0] else None
        self.emit("step", step=step, total=self.total, loss=loss, lr=next(iter(lrs.values()), None),
                  lrs={k: _finite(v) for k, v in lrs.items()}, grad_norm=grad_norm,
                  its=round(its, 4) if its is not None else None)

    def sample(self, step: int, paths: list[str | Path]) -> None:
        self.emit("sample", step=step, images=[str(p) for p in paths])

    def save(self, step: int, adapter: str | Path, state: str | Path | None = None) -> None:
        self.emit("save", step=step, adapter=str(adapter), state=str(state) if state else None)

    def close(self, step: int, status: str) -> None:
        self.emit("end", step=step, status=status)
        self._file.close()


class _NoEvents:
    """An EventLog that writes nothing."""

    def emit(self, kind: str, **fields: Any) -> None:
        pass

    def step(self, step: int, loss: float | None, lrs: dict[str, float], grad_norm: float | None) -> None:
        pass

    def sample(self, step: int, paths: list[str | Path]) -> None:
        pass

    def save(self, step: int, adapter: str | Path, state: str | Path | None = None) -> None:
        pass

    def close(self, step: int, status: str) -> None:
        pass


NO_EVENTS = _NoEvents()
