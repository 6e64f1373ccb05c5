"""What an adapter learned, in numbers: `sdlora eval` and the demo's figures.

For any model (SD 1.x, 2.x, XL):

- ``ValidationSet`` / ``validation_loss``: the diffusion loss of a folder of held-out images (captions from
  ``.txt`` files beside them) at fixed timesteps with fixed noise — the same number every time for the
  same model, adapter and strength, so base vs adapter, strengths and checkpoints compare directly.

For the toy world of the embedded default model (``sdlora.toy.world``) additionally, from generated samples
read by the deterministic classifier:

- ``concept_rate``: share of samples of ``a <colour> <trigger> on a <background> background`` that show the
  concept shape; ``concept_colour``: share of those whose colour is the prompted one;
- ``prior_accuracy``: share of samples of the base prompts ``a <colour> <shape> on a <background>
  background`` that show the prompted colour *and* shape (with the adapter at that strength);
- ``diversity``: mean pixel RMS distance between samples of one concept prompt at different seeds
  (0 = every seed gives the same picture; needs two or more samples per prompt).

Samples are generated in batches with one CPU generator per sample (seed ``seed + k`` for the k-th sample
of a prompt list), so a figure does not depend on the batch size.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdlora.toy import world as tw
from sdlora.errors import ConfigError
from sdlora.models.core import BaseModel

TIMESTEPS = (100, 300, 500, 700, 900)
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


# --------------------------------------------------------------------------------------- validation loss
@dataclass
class ValidationSet:
    """Held-out images as latents (the VAE is never adapted, so they are encoded once) and their captions."""

    name: str
    latents: torch.Tensor  # (N, C, h, w) scaled latents
    captions: list[str]
    resolution: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @classmethod
    def from_images(cls, model: BaseModel, name: str, images: Sequence[Image.Image], captions: Sequence[str],
                    resolution: int | None = None, skipped=None) -> "ValidationSet":
        from sdlora.trainers.encode import encode_pixels

        if not images:
            raise ConfigError(f"validation set {name!r} has no usable image")
        res = int(resolution or model.default_size)
        pixels = torch.stack([_square(img, res) for img in images])
        scale = float(model.vae.config.scaling_factor)
        lat = torch.cat([encode_pixels(model.vae, pixels[i:i + 16], scale) for i in range(0, len(pixels), 16)])
        return cls(name, lat.cpu(), list(captions), res, list(skipped or []))

    @classmethod
    def from_folder(cls, model: BaseModel, folder: str | Path, name: str | None = None,
                    resolution: int | None = None) -> "ValidationSet":
        """Every image of ``folder`` with its ``.txt`` caption (empty when missing); unreadable images are
        skipped and listed in ``skipped``."""
        from sdlora.files.images import IMAGE_EXTENSIONS, BadImage, decode

        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"validation folder {folder} does not exist; give a folder of held-out images "
                              "with .txt captions beside them")
        images, captions, skipped = [], [], []
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            try:
                images.append(decode(path).image)
            except BadImage as exc:
                skipped.append((path.name, str(exc)))
                continue
            txt = path.with_suffix(".txt")
            captions.append(txt.read_text(encoding="utf-8").strip() if txt.is_file() else "")
        if not images:
            raise ConfigError(f"validation folder {folder} holds no readable image"
                              + (f" ({len(skipped)} skipped: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
        return cls.from_images(model, name or folder.name, images, captions, resolution, skipped)

    @torch.no_grad()
    def loss(self, model: BaseModel, *, seed: int = 0, timesteps: Sequence[int] = TIMESTEPS, batch: int = 32
             ) -> float:
        """Mean MSE between the UNet's prediction and its target over every image × timestep; the noise of
        image i at timestep t comes from a generator seeded with (seed, i, t)."""
        from sdlora.trainers.encode import encode_text, time_ids
        from sdlora.trainers.noise import add_noise, target

        unet = model.unet
        param = next(unet.parameters())
        alphas = _alphas_cumprod(model)
        pairs = [(i, int(t)) for i in range(len(self.captions)) for t in timesteps]
        total = 0.0
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            idx = [i for i, _ in chunk]
            ts = torch.tensor([t for _, t in chunk])
            lat = self.latents[idx]
            noise = torch.cat([torch.randn((1, *lat.shape[1:]),
                                           generator=torch.Generator().manual_seed(seed * 100003 + i * 1009 + t))
                               for i, t in chunk])
            hidden, pooled = encode_text(model, [self.captions[i] for i in idx])
            added = None
            if pooled is not None:
                r = self.resolution
                added = {"text_embeds": pooled.to(param.dtype),
                         "time_ids": time_ids([(r, r)] * len(chunk), [(0, 0)] * len(chunk), (r, r)).to(
                             param.device, param.dtype)}
            noisy = add_noise(lat, noise, ts, alphas)
            pred = unet(noisy.to(param.device, param.dtype), ts.to(param.device), hidden.to(param.dtype),
                        added_cond_kwargs=added, return_dict=False)[0].float().cpu()
            tgt = target(lat, noise, ts, alphas, model.prediction_type)
            total += float(((pred - tgt) ** 2).mean(dim=(1, 2, 3)).sum())
        return total / len(pairs)


def _alphas_cumprod(model: BaseModel) -> torch.Tensor:
    import warnings

    from diffusers import DDPMScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = {k: v for k, v in model.base_scheduler.items() if not k.startswith("_")}
        return DDPMScheduler.from_config(cfg).alphas_cumprod.float()


def _square(img: Image.Image, res: int) -> torch.Tensor:
    """Centre square crop, resized to ``res``, as (3, res, res) in [-1, 1]."""
    w, h = img.size
    s = min(w, h)
    img = img.convert("RGB").crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != res:
        img = img.resize((res, res), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def validation_loss(model: BaseModel, folder: str | Path, **kw: Any) -> float:
    """``ValidationSet.from_folder(model, folder).loss(model, **kw)``."""
    return ValidationSet.from_folder(model, folder).loss(model, **kw)


# --------------------------------------------------------------------------------------- toy world
def is_toy_model(model: BaseModel) -> bool:
    """True for a model of the toy world (its tokenizer knows exactly the toy vocabulary)."""
    try:
        vocab = model.tokenizers[0].get_vocab()
    except Exception:  # noqa: BLE001 - any tokenizer without a vocabulary is not the toy one
        return False
    return len(vocab) < 1000 and all(f"{w}</w>" in vocab for w in tw.WORDS)


def toy_sets(model: BaseModel, concept_shape: str = "star", trigger: str = "sks", n: int = 12
             ) -> tuple[ValidationSet, ValidationSet]:
    """Held-out toy images: ``n`` of the concept (a seed the demo's training folder does not use) and
    ``n`` of the base shapes, with their captions."""
    import random

    rng = random.Random(90210)
    combos = [(c, b) for c in tw.COLOURS for b in tw.BACKGROUNDS]
    concept = [tw.sample_scene(rng, shapes=(concept_shape,), colours=[c], backgrounds=[b])
               for c, b in combos[:n]]
    rng = random.Random(4321)
    prior = [tw.sample_scene(rng) for _ in range(n)]
    return (ValidationSet.from_images(model, "concept", [tw.render(s) for s in concept],
                                      [s.caption(trigger) for s in concept], tw.SIZE),
            ValidationSet.from_images(model, "prior", [tw.render(s) for s in prior],
                                      [s.caption() for s in prior], tw.SIZE))


@torch.no_grad()
def sample_batch(model: BaseModel, captions: Sequence[str], seeds: Sequence[int], *, steps: int = 25,
                 cfg: float = 3.0, sampler: str = "ddim", batch: int = 64, size: int | None = None
                 ) -> list[np.ndarray]:
    """One image per (caption, seed) as (H, W, 3) floats in [0, 1], generated ``batch`` at a time with the
    model's current adapters; sample k uses its own CPU generator seeded with ``seeds[k]``."""
    from sdlora.inference.generate import _prepare

    w, h = _prepare(model, sampler, size, size)
    out: list[np.ndarray] = []
    for start in range(0, len(captions), batch):
        caps = list(captions[start:start + batch])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch]]
        res = model.pipe(prompt=caps, num_inference_steps=int(steps), guidance_scale=float(cfg), width=w,
                         height=h, generator=gens, output_type="np")
        out.extend(np.asarray(img, dtype=np.float32) for img in res.images)
    return out


def _to_pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray((arr * 255).round().clip(0, 255).astype(np.uint8))


def concept_prompts(trigger: str = "sks") -> list[tw.Scene]:
    return [tw.Scene(c, trigger, b, 0, 0, 0) for c in tw.COLOURS for b in tw.BACKGROUNDS]


def prior_prompts() -> list[tw.Scene]:
    return [tw.Scene(c, s, b, 0, 0, 0) for c in tw.COLOURS for s in tw.BASE_SHAPES for b in tw.BACKGROUNDS]


def toy_figures(model: BaseModel, *, per_prompt: int = 2, seed: int = 1000, steps: int = 25, cfg: float = 3.0,
                concept_shape: str = "star", trigger: str = "sks", prior: bool = True, batch: int = 64) -> dict:
    """Concept rate, concept colour accuracy, diversity and (when ``prior``) prior accuracy of the model as
    it stands (adapters and strengths as set)."""
    concept = concept_prompts(trigger)
    caps = [sc.caption() for sc in concept for _ in range(per_prompt)]
    seeds = [seed + k for k in range(len(caps))]
    imgs = sample_batch(model, caps, seeds, steps=steps, cfg=cfg, batch=batch)
    reads = [tw.classify(_to_pil(a)) for a in imgs]
    wanted = [sc for sc in concept for _ in range(per_prompt)]
    out: dict = {
        "concept_rate": sum(r.shape == concept_shape for r in reads) / len(reads),
        "concept_colour": sum(r.colour == sc.colour for r, sc in zip(reads, wanted)) / len(reads),
        "diversity": _diversity(imgs, per_prompt),
        "samples_concept": len(reads),
    }
    if prior:
        scenes = prior_prompts()
        caps = [sc.caption() for sc in scenes for _ in range(per_prompt)]
        pseeds = [seed + 50000 + k for k in range(len(caps))]
        pimgs = sample_batch(model, caps, pseeds, steps=steps, cfg=cfg, batch=batch)
        wanted = [sc for sc in scenes for _ in range(per_prompt)]
        preads = [tw.classify(_to_pil(a), shapes=tw.SHAPES) for a in pimgs]
        out["prior_accuracy"] = sum(r.shape == sc.shape and r.colour == sc.colour
                                    for r, sc in zip(preads, wanted)) / len(preads)
        out["prior_colour"] = sum(r.colour == sc.colour for r, sc in zip(preads, wanted)) / len(preads)
        out["prior_shape"] = sum(r.shape == sc.shape for r, sc in zip(preads, wanted)) / len(preads)
        out["prior_shows_concept"] = sum(r.shape == concept_shape for r in preads) / len(preads)
        out["samples_prior"] = len(preads)
    return out


def _diversity(images: list[np.ndarray], per_prompt: int) -> float | None:
    if per_prompt < 2:
        return None
    dists = []
    for start in range(0, len(images), per_prompt):
        group = images[start:start + per_prompt]
        for a, b in itertools.combinations(group, 2):
            dists.append(float(np.sqrt(((a - b) ** 2).mean())))
    return float(np.mean(dists)) if dists else None


# --------------------------------------------------------------------------------------- the evaluation
@dataclass
class EvalRow:
    adapter: str  # "base" or the adapter file's name
    step: int | None
    strength: float
    figures: dict[str, Any]

    def as_dict(self) -> dict:
        return {"adapter": self.adapter, "step": self.step, "strength": self.strength, **self.figures}


def _adapter_step(path: Path) -> int | None:
    from sdlora.adapters import AdapterFile

    try:
        meta = AdapterFile.read(path).metadata
    except Exception:  # noqa: BLE001 - the real load below reports a bad file properly
        return None
    for key in ("ss_steps", "sdlora_step"):
        if str(meta.get(key, "")).isdigit():
            return int(meta[key])
    return None


def evaluate(model: BaseModel, adapters: Sequence[str | Path] = (), *, strengths: Sequence[float] = STRENGTHS,
             sets: Sequence[ValidationSet] = (), toy: bool | None = None, per_prompt: int = 2, seed: int = 1000,
             steps: int = 25, cfg: float = 3.0, trigger: str = "sks", concept_shape: str = "star",
             prior_at: Sequence[float] | None = None, log: Callable[[str], None] = print) -> list[EvalRow]:
    """The base row, then one row per (adapter checkpoint, strength): validation losses of ``sets`` and,
    for a toy-world model, the toy figures. ``prior_at`` limits the adapter rows' prior-accuracy samples to
    those strengths (all when None; the base row always has them)."""
    from sdlora.inference.stack import AdapterStack

    toy = is_toy_model(model) if toy is None else toy
    stack = model.stack if model.stack is not None else AdapterStack(model)
    rows: list[EvalRow] = []

    def measure(strength: float, base: bool = False) -> dict:
        fig: dict[str, Any] = {}
        for vs in sets:
            fig[f"loss_{vs.name}"] = vs.loss(model)
        if toy:
            fig.update(toy_figures(model, per_prompt=per_prompt, seed=seed, steps=steps, cfg=cfg,
                                   concept_shape=concept_shape, trigger=trigger,
                                   prior=base or prior_at is None
                                   or any(math.isclose(strength, p) for p in prior_at)))
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


# --------------------------------------------------------------------------------------- plot
def plot(rows: Sequence[EvalRow], path: str | Path) -> Path:
    """Figures against strength, one line per checkpoint: rates in one panel, losses in the other.
    matplotlib when installed, else a chart drawn with pillow."""
    from sdlora.files.tensors import atomic_path

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
    from PIL import ImageDraw, ImageFont

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


def write_outputs(rows: Sequence[EvalRow], out: str | Path, extra: dict | None = None) -> dict[str, Path]:
    """``eval.json`` (every row), ``eval.txt`` (the table) and ``eval.png`` (the plot) in ``out``."""
    from sdlora.files.tensors import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "table": out / "eval.txt", "plot": out / "eval.png"}
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps({**(extra or {}), "rows": [r.as_dict() for r in rows]}, indent=2))
    with atomic_path(paths["table"]) as tmp:
        Path(tmp).write_text(format_table(rows) + "\n")
    plot(rows, paths["plot"])
    return paths
