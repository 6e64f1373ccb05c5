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

from sdlora.evaluation import STRENGTHS, EvalRow, write_outputs
from sdlora.inference.generate import save_png, sweep, to_pil
from sdlora.inference.stack import AdapterSpec, AdapterStack
from sdlora.models.configs import default_model_path
from sdlora.models import open_model
from sdlora.tools.bake import bake
from sdlora.toy import evaluate as tev
from sdlora.toy import world as tw
from sdlora.trainers.config import config_from_dict
from sdlora.trainers.loop import Trainer

def demo_config(out: Path, data: Path, steps: int, seed: int, model: Path | None = None,
                reg: Path | None = None) -> dict:
    """The demo's training config (the same keys as configs/quickstart.toml)."""
    dataset = {"path": str(data), "trigger": "sks", "resolution": tw.SIZE, "min_image_side": 16,
               "bucket_min_side": 16, "bucket_max_side": 64, "bucket_step": 8, "flip": True}
    if reg is not None:
        dataset.update(reg_path=str(reg), prior_loss_weight=1.0)
    return {
        "model": {"path": str(model or default_model_path())},
        "network": {"algo": "lora", "rank": 16, "alpha": 16.0},
        "dataset": dataset,
        "training": {"max_steps": steps, "batch_size": 4, "learning_rate": 3e-3, "seed": seed,
                     "save_every_steps": 0},
        "optimizer": {"scheduler": "cosine"},
        "output": {"dir": str(out / "train"), "name": "demo-sks"},
    }


def write_class_images(model_path: Path, folder: Path, seed: int = 0, per_prompt: int = 1, steps: int = 20) -> Path:
    """DreamBooth's prior preservation: the base model's own samples of the base prompts (every colour,
    shape and background) with their captions, used as regularisation images while the adapter trains,
    so it learns the trigger word without redrawing what the base prompts show."""
    model = open_model(model_path, dtype=torch.float32)
    model.pipe.set_progress_bar_config(disable=True)
    scenes = [sc for sc in tev.prior_prompts() for _ in range(per_prompt)]
    images = tev.sample_batch(model, [sc.caption() for sc in scenes], [seed + 70000 + k for k in range(len(scenes))],
                             steps=steps, cfg=3.0)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (sc, arr) in enumerate(zip(scenes, images)):
        to_pil(arr).save(folder / f"{k:03d}.png")
        (folder / f"{k:03d}.txt").write_text(sc.caption() + "\n")
    return folder


def run_demo(out: str | Path = "sdlora-demo", *, steps: int = 1200, seed: int = 42, per_prompt: int = 2,
             log=print, model_path: str | Path | None = None, sample_steps: int = 20) -> dict:
    """Train, sweep, bake and evaluate; write ``report.json`` in ``out`` and return it."""
    t0 = time.time()
    base = Path(model_path) if model_path else default_model_path()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    tw.write_concept_dataset(data)
    log(f"demo: {len(list(data.glob('*.png')))} training images of the new concept in {data}")
    reg = write_class_images(base, out / "reg", seed=seed, steps=sample_steps)
    log(f"demo: {len(list(reg.glob('*.png')))} class images from the base model for prior preservation in {reg}")
    cfg = config_from_dict(demo_config(out, data, steps, seed, base, reg), out)
    result = Trainer(cfg, log=log).run()
    adapter = Path(result.adapter)
    log(f"demo: adapter {adapter}")

    model = open_model(base, dtype=torch.float32)  # the shipped weights are fp16; the CPU computes in fp32
    model.pipe.set_progress_bar_config(disable=True)
    stack = AdapterStack(model)
    stack.add(adapter, name="sks", strength=1.0)
    grid = sweep(model, "a red sks on a white background", list(STRENGTHS), adapter="sks", seed=seed, count=3,
                 steps=sample_steps, cfg=3.0, sampler="ddim", progress=False)
    grid_path = save_png(grid, out / "grid.png")
    log(f"demo: strength sweep grid {grid_path}")
    log(f"demo: evaluating ({per_prompt} samples per prompt; concept rate at every strength, prior accuracy "
        "without the adapter and at 1, validation losses)...")
    sets = tev.toy_sets(model)
    rows = tev.evaluate(model, [adapter], strengths=STRENGTHS, sets=sets, toy=True, per_prompt=per_prompt,
                        steps=sample_steps, prior_at=(1.0,), log=log)
    figures = report_figures(rows, write_outputs(rows, out / "eval"))
    baked = bake(base, [AdapterSpec(adapter, 1.0)], out / "baked.safetensors", progress=False)
    log(f"demo: baked checkpoint {baked}")
    report = {**figures, "adapter": str(adapter), "grid": str(grid_path), "baked": str(baked),
              "train_steps": result.step, "final_loss": result.losses.get(max(result.losses), None)
              if result.losses else None, "seconds": round(time.time() - t0, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(format_report(report))
    log(f"demo: report {out / 'report.json'}")
    return report


def report_figures(rows: list[EvalRow], paths: dict[str, Path]) -> dict:
    """The report's figures from the evaluation rows (base first, then the adapter at each of
    ``STRENGTHS``) and the paths of the written table and plot, with the targets checked."""
    base_row, ad = rows[0], {r.strength: r.figures for r in rows[1:]}
    figures = {
        "concept_rate": {f"{s:g}": ad[s]["concept_rate"] for s in STRENGTHS},
        "concept_rate_base": base_row.figures["concept_rate"],
        "prior_accuracy_base": base_row.figures["prior_accuracy"],
        "prior_accuracy_adapter": ad[1.0]["prior_accuracy"],
        "concept_colour": {f"{s:g}": ad[s]["concept_colour"] for s in STRENGTHS},
        "diversity": {f"{s:g}": ad[s]["diversity"] for s in STRENGTHS},
        "validation_loss": {"base": {k: v for k, v in base_row.figures.items() if k.startswith("loss_")},
                            **{f"{s:g}": {k: v for k, v in ad[s].items() if k.startswith("loss_")}
                               for s in STRENGTHS}},
        "samples_per_point": {"concept": base_row.figures["samples_concept"],
                              "prior": base_row.figures["samples_prior"]},
        "eval_table": str(paths["table"]), "eval_plot": str(paths["plot"]),
    }
    figures["targets"] = check_targets(figures)
    return figures


def check_targets(fig: dict) -> dict:
    """The demo's targets: concept rate ≥ 90% at strength 1, equal to the base's at 0, monotone
    (non-decreasing) from 0 to 1; prior accuracy with the adapter within 5 points of the base's."""
    rates = [fig["concept_rate"][f"{s:g}"] for s in STRENGTHS if s <= 1.0]
    return {
        "concept_rate_at_1_ge_90": fig["concept_rate"]["1"] >= 0.9,
        "concept_rate_at_0_equals_base": fig["concept_rate"]["0"] == fig["concept_rate_base"],
        "monotone_0_to_1": all(b >= a for a, b in zip(rates, rates[1:])),
        "prior_within_5_points": abs(fig["prior_accuracy_adapter"] - fig["prior_accuracy_base"]) <= 0.05,
    }


def format_report(r: dict) -> str:
    lines = ["strength   concept rate   concept loss"]
    vl = r.get("validation_loss", {})
    lines += [f"{k:>8}   {v:12.1%}   {vl.get(k, {}).get('loss_concept', float('nan')):12.4f}"
              for k, v in r["concept_rate"].items()]
    lines.append(f"prior accuracy: base {r['prior_accuracy_base']:.1%}, with the adapter "
                 f"{r['prior_accuracy_adapter']:.1%}   ({r['seconds']:.0f} s in all)")
    if "targets" in r:
        lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in r["targets"].items()))
    return "\n".join(lines)
