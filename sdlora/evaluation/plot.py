"""The evaluation plot: figures against adapter strength, one line per checkpoint."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sdlora.evaluation.run import EvalRow
from sdlora.files.tensors import atomic_path


def plot(rows: Sequence[EvalRow], path: str | Path) -> Path:
    """Figures against strength, one line per checkpoint: rates in one panel, losses in the other.
    matplotlib when installed, else a chart drawn with pillow."""
    path = Path(path)
    series = _series(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        img = _pil_chart(series)
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
        return path
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (panel, label), pts in series.items():
        ax = axes[0 if panel == "rate" else 1]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=label)
    axes[0].set(xlabel="adapter strength", ylabel="share of samples", ylim=(-0.02, 1.02), title="toy figures")
    axes[1].set(xlabel="adapter strength", ylabel="validation loss", title="validation loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _series(rows: Sequence[EvalRow]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    base = next((r for r in rows if r.adapter == "base"), None)
    for r in rows:
        if r.adapter == "base":
            continue
        tag = r.adapter if r.step is None else f"{r.adapter} (step {r.step})"
        for k, v in r.figures.items():
            if v is None or k.startswith("samples") or k in ("diversity", "concept_colour", "prior_colour",
                                                              "prior_shape"):
                continue
            panel = "loss" if k.startswith("loss_") else "rate"
            series.setdefault((panel, f"{k} · {tag}"), []).append((r.strength, float(v)))
    if base is not None:
        for k, v in base.figures.items():
            if k.startswith("loss_") or k in ("concept_rate", "prior_accuracy"):
                if v is not None:
                    panel = "loss" if k.startswith("loss_") else "rate"
                    series.setdefault((panel, f"{k} · base"), []).append((0.0, float(v)))
    return series


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _axes(panel: str, pts: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of a panel: rates on [0, 1], losses with a 10% margin."""
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    xmax = xmax if xmax > xmin else xmin + 1.0
    if panel == "rate":
        return xmin, xmax, 0.0, 1.0
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    margin = (ymax - ymin) * 0.1 or abs(ymax) * 0.05 or 1.0
    return xmin, xmax, ymin - margin, ymax + margin


def _pil_chart(series: dict[tuple[str, str], list[tuple[float, float]]]) -> Image.Image:
    font = ImageFont.load_default()
    W, H, pad, legend_h = 900, 360, 46, 14 * (len(series) + 1)
    img = Image.new("RGB", (W, H + legend_h), "white")
    d = ImageDraw.Draw(img)
    panels = {"rate": (pad, 20, W // 2 - 20, H - pad), "loss": (W // 2 + pad, 20, W - 20, H - pad)}
    titles = {"rate": "toy figures (share of samples)", "loss": "validation loss"}
    for i, (panel, box) in enumerate(panels.items()):
        pts = [p for (pn, _), s in series.items() if pn == panel for p in s]
        x0, y0, x1, y1 = box
        d.rectangle(box, outline=(0, 0, 0))
        d.text((x0, 4), titles[panel], fill=(0, 0, 0), font=font)
        d.text(((x0 + x1) // 2 - 40, y1 + 18), "adapter strength", fill=(0, 0, 0), font=font)
        if not pts:
            d.text((x0 + 10, (y0 + y1) // 2), "no data", fill=(120, 120, 120), font=font)
            continue
        xmin, xmax, ymin, ymax = _axes(panel, pts)
        sx = lambda x: x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)  # noqa: E731
        sy = lambda y: y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)  # noqa: E731
        for k in range(5):
            yv = ymin + (ymax - ymin) * k / 4
            d.line((x0, sy(yv), x1, sy(yv)), fill=(230, 230, 230))
            d.text((x0 - 42, sy(yv) - 6), f"{yv:.3g}", fill=(0, 0, 0), font=font)
        for xv in sorted({p[0] for p in pts}):
            d.text((sx(xv) - 8, y1 + 4), f"{xv:g}", fill=(0, 0, 0), font=font)
    for n, ((panel, label), pts) in enumerate(series.items()):
        colour = _PALETTE[n % len(_PALETTE)]
        x0, y0, x1, y1 = panels[panel]
        xmin, xmax, ymin, ymax = _axes(panel, [p for (pn, _), s in series.items() if pn == panel for p in s])
        xy = [(x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))
              for x, y in sorted(pts)]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for x, y in xy:
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        ly = H + 4 + 14 * n
        d.rectangle((pad, ly + 3, pad + 12, ly + 9), fill=colour)
        d.text((pad + 18, ly), label, fill=(0, 0, 0), font=font)
    return img
