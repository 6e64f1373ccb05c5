"""One evaluation: the base row, then one row per (adapter checkpoint, strength), each with the figures
of the model as it stands (validation losses plus whatever an app measures, e.g. the toy world's rates)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlora.adapters import AdapterFile
from sdlora.inference.stack import AdapterStack
from sdlora.models import BaseModel
from sdlora.evaluation.validation import ValidationSet

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


@dataclass
class EvalRow:
    adapter: str  # "base" or the adapter file's name
    step: int | None
    strength: float
    figures: dict[str, Any]

    def as_dict(self) -> dict:
        return {"adapter": self.adapter, "step": self.step, "strength": self.strength, **self.figures}


def _adapter_step(path: Path) -> int | None:
    try:
        meta = AdapterFile.read(path).metadata
    except Exception:  # noqa: BLE001 - the real load below reports a bad file properly
        return None
    for key in ("ss_steps", "sdlora_step"):
        if str(meta.get(key, "")).isdigit():
            return int(meta[key])
    return None


Figures = Callable[[float, bool], dict[str, Any]]  # (strength, is the base row) -> extra figures


def evaluate(model: BaseModel, adapters: Sequence[str | Path] = (), *, strengths: Sequence[float] = STRENGTHS,
             sets: Sequence[ValidationSet] = (), figures: Figures | None = None,
             log: Callable[[str], None] = print) -> list[EvalRow]:
    """The base row (every adapter of the model's stack at strength 0), then one row per (adapter
    checkpoint, strength): validation losses of ``sets`` plus ``figures(strength, base)`` when given.
    The stack's strengths are restored afterwards."""
    stack = model.stack if model.stack is not None else AdapterStack(model)
    rows: list[EvalRow] = []

    def measure(strength: float, base: bool = False) -> dict:
        fig: dict[str, Any] = {f"loss_{vs.name}": vs.loss(model) for vs in sets}
        if figures is not None:
            fig.update(figures(strength, base))
        return fig

    t0 = time.time()
    base_was = [(a.name, a.strength) for a in stack]
    for a in list(stack):
        stack.set_strength(a.name, 0.0)
    try:
        rows.append(EvalRow("base", None, 0.0, measure(0.0, base=True)))
        log(f"eval: base done ({time.time() - t0:.0f} s)")
        for path in adapters:
            path = Path(path)
            name = "eval:" + path.stem
            stack.add(path, name=name, strength=0.0)
            try:
                step = _adapter_step(path)
                for s in strengths:
                    stack.set_strength(name, float(s))
                    rows.append(EvalRow(path.name, step, float(s), measure(float(s))))
                log(f"eval: {path.name} done ({time.time() - t0:.0f} s)")
            finally:
                stack.remove(name)
    finally:
        for n, s in base_was:
            stack.set_strength(n, s)
    return rows
