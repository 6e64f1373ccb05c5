"""Requests to a running training: ``<output.dir>/control.json``, written atomically by a controller
(the studio), read by the trainer once per step.

The file holds ``{"requests": [{"seq": 1, "action": "sample"}, ...]}`` with increasing ``seq``; actions are
``sample`` (draw the sample prompts now) and ``save`` (write an adapter and a resumable state now). A
trainer handles only requests made after it started.
"""
from __future__ import annotations

import json
from pathlib import Path

from sdlora.errors import ConfigError
from sdlora.files.tensors import atomic_write_bytes

ACTIONS = ("sample", "save")
_KEEP = 20


def _read(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    requests = data.get("requests") if isinstance(data, dict) else None
    return [r for r in requests or [] if isinstance(r, dict) and isinstance(r.get("seq"), int)]


def request(out_dir: str | Path, action: str) -> int:
    """Append a request for ``action`` to ``out_dir``/control.json (atomically); returns its seq."""
    if action not in ACTIONS:
        raise ConfigError(f"action = {action!r} is not allowed: use one of {', '.join(ACTIONS)}")
    path = Path(out_dir) / "control.json"
    requests = _read(path)
    seq = max((r["seq"] for r in requests), default=0) + 1
    requests = (requests + [{"seq": seq, "action": action}])[-_KEEP:]
    atomic_write_bytes(path, json.dumps({"requests": requests}).encode("utf-8"))
    return seq


class Control:
    """The trainer's side: ``poll()`` returns the actions requested since the last poll (or the start);
    ``handle(trainer, monitor)`` carries them out. Disabled (``enabled=False``) in multi-process runs, where
    every process would have to see a request at the same step."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = out_dir / "control.json"
        self._stamp = self._mtime()
        self.seen = max((r["seq"] for r in _read(self.path)), default=0)

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def poll(self) -> list[str]:
        if not self.enabled:
            return []
        stamp = self._mtime()
        if stamp == self._stamp:
            return []
        self._stamp = stamp
        new = [r for r in _read(self.path) if r["seq"] > self.seen and r.get("action") in ACTIONS]
        if new:
            self.seen = max(r["seq"] for r in new)
        return [r["action"] for r in new]

    def handle(self, trainer, monitor) -> None:
        """Draw samples / save an adapter and state now, for each request since the last step."""
        for action in self.poll():
            trainer.log(f"step {trainer.step}: '{action} now' requested")
            if action == "sample":
                trainer.sample(monitor)
            else:
                trainer._periodic_save()
