"""The evaluation's outputs: the plain-text table and ``eval.json``/``eval.txt``/``eval.png``."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sdlora.evaluation.plot import plot
from sdlora.evaluation.run import EvalRow
from sdlora.files.tensors import atomic_path


def format_table(rows: Sequence[EvalRow]) -> str:
    """A plain-text table of the rows (percentages for rates, 4 decimals for losses)."""
    keys = [k for k in ("loss_concept", "loss_prior") if any(k in r.figures for r in rows)]
    keys += sorted({k for r in rows for k in r.figures if k.startswith("loss_")} - set(keys))
    keys += [k for k in ("concept_rate", "concept_colour", "prior_accuracy", "prior_shows_concept", "diversity")
             if any(r.figures.get(k) is not None for r in rows)]
    head = ["adapter", "step", "strength"] + keys
    body = []
    for r in rows:
        cells = [r.adapter, "" if r.step is None else str(r.step), "—" if r.adapter == "base" else f"{r.strength:g}"]
        for k in keys:
            v = r.figures.get(k)
            if v is None:
                cells.append("")
            elif k.startswith("loss_") or k == "diversity":
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.1%}")
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in body])


def write_outputs(rows: Sequence[EvalRow], out: str | Path, extra: dict | None = None) -> dict[str, Path]:
    """``eval.json`` (every row), ``eval.txt`` (the table) and ``eval.png`` (the plot) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "table": out / "eval.txt", "plot": out / "eval.png"}
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps({**(extra or {}), "rows": [r.as_dict() for r in rows]}, indent=2))
    with atomic_path(paths["table"]) as tmp:
        Path(tmp).write_text(format_table(rows) + "\n")
    plot(rows, paths["plot"])
    return paths
