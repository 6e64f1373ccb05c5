"""`sdlora demo`: the main job end to end on the embedded default model, offline, on a CPU.

Trains a LoRA on a concept the base model has never seen (a star shape behind the trigger word ``sks``),
renders a strength-sweep grid, bakes the adapter into a checkpoint, and measures what the adapter learned
with the toy world's deterministic classifier:

- ``concept_rate[strength]``: share of samples for ``a <colour> sks on a <background> background`` that
  show a star, per adapter strength (0 = the base model);
- ``prior_accuracy_base`` / ``prior_accuracy_adapter``: share of samples for the base prompts
  (``a <colour> <shape> on a <background> background``) showing the prompted colour and shape, without and
  with the adapter at strength 1.
Everything lands in ``--out`` (``report.json`` lists every path).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import toyworld as tw
from .errors import ModelError

DEFAULT_MODEL = Path(__file__).parent / "assets" / "default"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


def default_model_path() -> Path:
    """The embedded default model's folder; a clear error when it is not installed."""
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        raise ModelError(f"the embedded default model is missing ({DEFAULT_MODEL}); reinstall sdlora, or make it "
                         "with `python -m sdlora.pretrain_default --out sdlora/assets/default`")
    return DEFAULT_MODEL


def demo_config(out: Path, data: Path, steps: int, seed: int) -> dict:
    """The demo's training config (the same keys as configs/quickstart.toml)."""
    return {
        "model": {"path": str(default_model_path())},
        "network": {"algo": "lora", "rank": 8, "alpha": 4.0},
        "dataset": {"path": str(data), "trigger": "sks", "resolution": tw.SIZE, "min_image_side": 16,
                    "bucket_min_side": 16, "bucket_max_side": 64, "bucket_step": 8, "flip": True},
        "training": {"max_steps": steps, "batch_size": 4, "learning_rate": 1e-3, "seed": seed,
                     "save_every_steps": 0},
        "output": {"dir": str(out / "train"), "name": "demo-sks"},
    }


def _prompts(shape_word: str, shapes=None) -> list[tw.Scene]:
    if shapes is None:
        return [tw.Scene(c, shape_word, b, 0, 0, 0) for c in tw.COLOURS for b in tw.BACKGROUNDS]
    return [tw.Scene(c, s, b, 0, 0, 0) for c in tw.COLOURS for s in shapes for b in tw.BACKGROUNDS]


def evaluate(model, *, strengths=STRENGTHS, adapter: str | None = None, per_prompt: int = 1, seed: int = 1000,
             steps: int = 25, cfg: float = 3.0, concept_shape: str = "star", trigger: str = "sks",
             progress: bool = False) -> dict:
    """Concept rate per strength and prior accuracy with the adapter off and at 1 (toy world only)."""
    from .generate import generate

    def rate(scenes, check) -> float:
        ok = total = 0
        for i, sc in enumerate(scenes):
            for img in generate(model, sc.caption(), seed=seed + i * per_prompt, count=per_prompt, steps=steps,
                                cfg=cfg, sampler="ddim", progress=progress):
                ok += check(tw.classify(img.image), sc)
                total += 1
        return ok / max(total, 1)

    def set_strength(s: float) -> None:
        if adapter is not None:
            model.stack.set_strength(adapter, s)

    concept = _prompts(trigger)
    prior = _prompts("", tw.BASE_SHAPES)
    out: dict = {"concept_rate": {}}
    for s in strengths:
        set_strength(s)
        out["concept_rate"][f"{s:g}"] = rate(concept, lambda r, sc: r.shape == concept_shape)
    both = lambda r, sc: r.shape == sc.shape and r.colour == sc.colour  # noqa: E731
    set_strength(0.0)
    out["prior_accuracy_base"] = rate(prior, both)
    set_strength(1.0)
    out["prior_accuracy_adapter"] = rate(prior, both)
    out["samples_per_point"] = {"concept": len(concept) * per_prompt, "prior": len(prior) * per_prompt}
    return out


def run_demo(out: str | Path = "sdlora-demo", *, steps: int = 300, seed: int = 42, per_prompt: int = 1,
             log=print) -> dict:
    """Train, sweep, bake and evaluate; write ``report.json`` in ``out`` and return it."""
    from .bake import bake
    from .generate import save_png, sweep
    from .models import open_model
    from .stack import AdapterSpec, AdapterStack
    from .trainers.config import config_from_dict
    from .trainers.loop import Trainer

    t0 = time.time()
    base = default_model_path()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    tw.write_concept_dataset(data)
    log(f"demo: {len(list(data.glob('*.png')))} training images of the new concept in {data}")
    cfg = config_from_dict(demo_config(out, data, steps, seed), out)
    result = Trainer(cfg, log=log).run()
    adapter = Path(result.adapter)
    log(f"demo: adapter {adapter}")

    model = open_model(base, dtype=torch.float32)  # the shipped weights are fp16; the CPU computes in fp32
    model.pipe.set_progress_bar_config(disable=True)
    stack = AdapterStack(model)
    stack.add(adapter, name="sks", strength=1.0)
    grid = sweep(model, "a red sks on a white background", list(STRENGTHS), adapter="sks", seed=seed, count=3,
                 steps=25, cfg=3.0, sampler="ddim", progress=False)
    grid_path = save_png(grid, out / "grid.png")
    log(f"demo: strength sweep grid {grid_path}")
    log("demo: evaluating (concept rate per strength, prior accuracy)...")
    figures = evaluate(model, adapter="sks", per_prompt=per_prompt)
    baked = bake(base, [AdapterSpec(adapter, 1.0)], out / "baked.safetensors", progress=False)
    log(f"demo: baked checkpoint {baked}")
    report = {**figures, "adapter": str(adapter), "grid": str(grid_path), "baked": str(baked),
              "train_steps": result.step, "final_loss": result.losses.get(max(result.losses), None)
              if result.losses else None, "seconds": round(time.time() - t0, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(format_report(report))
    log(f"demo: report {out / 'report.json'}")
    return report


def format_report(r: dict) -> str:
    lines = ["strength   concept rate"]
    lines += [f"{k:>8}   {v:6.1%}" for k, v in r["concept_rate"].items()]
    lines.append(f"prior accuracy: base {r['prior_accuracy_base']:.1%}, with the adapter "
                 f"{r['prior_accuracy_adapter']:.1%}   ({r['seconds']:.0f} s in all)")
    return "\n".join(lines)
