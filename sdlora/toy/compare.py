"""The algorithm comparison on the demo's concept: LoRA, LoCon, LoHa and LoKr trained on the same data with
the same steps, batch, learning rate and seed (a small version of the LyCORIS paper's comparison).

    sdlora eval --compare lora,locon,loha,lokr --out compare/

For each algorithm: file size, trainable parameters, adapted layers, training time, the concept rate at
strength 1 of every saved checkpoint (and so the first step at which it reaches 90%), and the prior
accuracy with the final adapter on against the base's. Writes ``compare.json`` and ``compare.md`` (the
table the README shows).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sdlora.adapters import AdapterFile
from sdlora.errors import ConfigError
from sdlora.inference.stack import AdapterStack
from sdlora.models.configs import default_model_path
from sdlora.models import open_model
from sdlora.toy import evaluate as tev
from sdlora.toy import world as tw
from sdlora.toy.demo import demo_config, write_class_images
from sdlora.trainers.config import config_from_dict
from sdlora.trainers.loop import Trainer

#: the network section of each algorithm's config (training as in the demo: 36 class images for prior
#: preservation, batch 4, lr 3e-3 with a cosine decay, seed 42). Every alpha equals its rank (scale 1, as
#: the demo's LoRA); LoCon/LoHa/LoKr also adapt the ResNet convs (preset "full", the usual LyCORIS choice),
#: LoRA the attention and feed-forward layers (kohya's default).
ALGORITHMS: dict[str, dict] = {
    "lora": {"algo": "lora", "rank": 16, "alpha": 16.0},
    "locon": {"algo": "locon", "rank": 16, "alpha": 16.0, "conv_rank": 8, "conv_alpha": 8.0},
    "loha": {"algo": "loha", "rank": 8, "alpha": 8.0, "conv_rank": 4, "conv_alpha": 4.0},
    "lokr": {"algo": "lokr", "rank": 16, "alpha": 16.0, "factor": 4},
}
TARGET = 0.9


def _file_facts(path: Path) -> dict:
    af = AdapterFile.read(path)
    params = sum(t.numel() for mod in af.modules.values() for k, t in mod.items() if k != "alpha")
    layers = len(af.modules)
    return {"file_bytes": path.stat().st_size, "parameters": params, "layers": layers}


def compare(out: str | Path, algorithms: Sequence[str] = tuple(ALGORITHMS), *, steps: int = 1000,
            check_every: int = 250, seed: int = 42, per_prompt: int = 4, model_path: str | Path | None = None,
            sample_steps: int = 25, log: Callable[[str], None] = print) -> dict:
    """Train each algorithm on the demo's concept and measure it; see the module docstring."""
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise ConfigError(f"unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}")
    t0 = time.time()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = Path(model_path) if model_path else default_model_path()
    data = out / "data"
    tw.write_concept_dataset(data)
    reg = write_class_images(base, out / "reg", seed=seed, steps=sample_steps)
    model = open_model(base, dtype=torch.float32)
    model.pipe.set_progress_bar_config(disable=True)
    stack = AdapterStack(model)
    base_fig = tev.toy_figures(model, per_prompt=per_prompt, steps=sample_steps)
    log(f"compare: base concept rate {base_fig['concept_rate']:.1%}, prior accuracy {base_fig['prior_accuracy']:.1%}")
    results: dict = {"settings": {"steps": steps, "check_every": check_every, "seed": seed, "per_prompt": per_prompt,
                                  "batch_size": 4, "learning_rate": 3e-3, "target": TARGET, "model": str(base)},
                     "base": base_fig, "algorithms": {}}
    for name in algorithms:
        row = _train_and_measure(name, out, data, reg, base, model, stack, base_fig, steps=steps,
                                 check_every=check_every, seed=seed, per_prompt=per_prompt,
                                 sample_steps=sample_steps)
        curve = row["curve"]
        results["algorithms"][name] = row
        log(f"compare: {name}: {row['parameters']:,} parameters, {row['file_bytes'] / 1024:.0f} KiB, "
            f"{row['train_seconds']:.0f} s; concept rate by step "
            f"{', '.join(f'{s}: {r:.0%}' for s, r in sorted(curve.items()))}; "
            f"prior {row['prior_accuracy']:.1%}")
    results["seconds"] = round(time.time() - t0, 1)
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    (out / "compare.md").write_text(markdown_table(results) + "\n")
    log(markdown_table(results))
    log(f"compare: {out / 'compare.md'}, {out / 'compare.json'}")
    return results


def _train_and_measure(name: str, out: Path, data: Path, reg: Path, base: Path, model, stack: AdapterStack,
                       base_fig: dict, *, steps: int, check_every: int, seed: int, per_prompt: int,
                       sample_steps: int) -> dict:
    """Train ``name`` with the demo's settings, saving every ``check_every`` steps, and measure the
    concept rate of every checkpoint (the prior only of the final one); the algorithm's row."""
    cfg_dict = demo_config(out / name, data, steps, seed, base, reg)
    cfg_dict["network"] = dict(ALGORITHMS[name])
    cfg_dict["training"].update(save_every_steps=check_every, keep_last=10_000)
    cfg_dict["output"] = {"dir": str(out / name), "name": name}
    cfg = config_from_dict(cfg_dict, out)
    t1 = time.time()
    result = Trainer(cfg, log=lambda m: None).run()
    train_s = time.time() - t1
    final = Path(result.adapter)
    checkpoints = sorted((out / name).glob(f"{name}-step[0-9]*.safetensors")) + [final]
    curve: dict[int, float] = {}
    for ck in checkpoints:
        step = steps if ck == final else int(ck.stem.rsplit("step", 1)[1])
        stack.add(ck, name="cmp", strength=1.0)
        try:
            fig = tev.toy_figures(model, per_prompt=per_prompt, steps=sample_steps, prior=ck == final)
        finally:
            stack.remove("cmp")
        curve[step] = fig["concept_rate"]
        if ck == final:
            final_fig = fig
    reached = next((s for s, r in sorted(curve.items()) if r >= TARGET), None)
    return {**_file_facts(final), "train_seconds": round(train_s, 1), "curve": curve,
            "steps_to_target": reached, "concept_rate": final_fig["concept_rate"],
            "concept_colour": final_fig["concept_colour"], "prior_accuracy": final_fig["prior_accuracy"],
            "prior_drop": base_fig["prior_accuracy"] - final_fig["prior_accuracy"],
            "diversity": final_fig["diversity"], "adapter": str(final)}


def markdown_table(results: dict) -> str:
    s = results["settings"]
    base = results["base"]
    lines = [
        f"| algorithm | file size | trainable parameters | adapted layers | steps to {s['target']:.0%} concept rate "
        f"| concept rate at step {s['steps']} | prior accuracy (base {base['prior_accuracy']:.1%}) | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["algorithms"].items():
        reached = str(r["steps_to_target"]) if r["steps_to_target"] is not None else f"not within {s['steps']}"
        lines.append(f"| {name} | {r['file_bytes'] / 1024:.0f} KiB | {r['parameters']:,} | {r['layers']} | {reached} "
                     f"| {r['concept_rate']:.1%} | {r['prior_accuracy']:.1%} ({-r['prior_drop'] * 100:+.1f} pts) "
                     f"| {r['train_seconds']:.0f} s |")
    return "\n".join(lines)
