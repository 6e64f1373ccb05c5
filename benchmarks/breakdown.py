"""Where a whole `sdlora train` process spends its time, phase by phase, in one fresh process:

    python benchmarks/breakdown.py [--steps 25] [--threads 1] [--set training.compile=true ...]

Phases (wall clock, ``time.perf_counter``): Python start to this file's first line (read from the
process's start time in /proc), imports (torch, diffusers, transformers, sdlora's trainer), opening the
model, the rest of ``Trainer.__init__`` (data scan, network, cache filling; cache filling itself timed by
wrapping ``setup.fill_caches``), the training steps, and the end (final adapter save + state save, timed
by wrapping ``Trainer.save_adapter`` / ``save_state``). Inside the steps, a ``cProfile`` run of a few
extra steps gives the share of the forward/backward hook dispatch (the adapter modules' forward), host
syncs (``Tensor.item`` / ``__float__``) and the optimiser. The toy settings are workload (a)'s: the
embedded default model, datasets/demo at 32 px, batch 4, LoRA rank 8 on the attention layers.
Prints one JSON object.
"""
from __future__ import annotations

import time

T_FILE = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def process_started_at() -> float:
    """Wall-clock time this process started (Linux /proc), else this file's first line."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return T_FILE


def toy_params(steps: int, out: str) -> dict:
    from fixtures import DEMO, EMBEDDED_DEFAULT

    return {"model": str(EMBEDDED_DEFAULT), "data": str(DEMO), "resolution": 32, "batch": 4, "rank": 8, "alpha": 8,
            "lr": 1e-4, "algo": "lora", "preset": "attn", "precision": "no", "checkpointing": False, "seed": 0,
            "flip": False, "steps": steps, "warmup": 2, "cache": True, "out": out}


def _wrap_timer(owner, name: str, spent: dict, key: str) -> None:
    inner = getattr(owner, name)

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
    setattr(owner, name, timed)


def profile_steps(trainer, steps: int) -> dict:
    """cProfile of ``steps`` more optimiser steps: shares of the step time by where it is spent."""
    import cProfile
    import pstats

    from sdlora.trainers.batches import epoch_batches

    batches = epoch_batches(trainer.dataset, trainer.cfg.training.seed, 0, trainer.global_batch)
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    for i in range(steps):
        trainer.train_step([batches[i % len(batches)]], 0, i % len(batches))
    total = time.perf_counter() - t0
    prof.disable()
    stats = pstats.Stats(prof).stats
    def cum(pred) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if pred(f, n))
    return {"profiled_steps": steps, "profiled_s": total,
            "share_adapter_delta_forward": cum(lambda f, n: "networks/" in f and n == "delta_forward") / total,
            "share_bypass_hooks": cum(lambda f, n: "networks/" in f and n in ("_hook", "bypass")) / total,
            "share_backward": cum(lambda f, n: n == "run_backward" or n == "_engine_run_backward") / total,
            "share_optimizer_step": cum(lambda f, n: "optim" in f and n == "step") / total,
            "share_clip_grad": cum(lambda f, n: n == "clip_grad_norm_") / total,
            "host_syncs_per_step": sum(v[1] for (f, _, n), v in stats.items()
                                       if n in ("<method 'item' of 'torch._C.TensorBase' objects>",)) / steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="training.key=value added to the config")
    args = ap.parse_args(argv)
    started = process_started_at()
    out: dict = {"python_start_s": T_FILE - started}
    t = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    out["import_torch_diffusers_transformers_s"] = time.perf_counter() - t
    t = time.perf_counter()
    from sdlora.trainers import loop
    from sdlora.trainers.config import config_from_dict
    from sdlora_side import trainer_config
    out["import_sdlora_trainer_s"] = time.perf_counter() - t

    spent: dict = {}
    _wrap_timer(loop, "open_model", spent, "open_model_s")
    _wrap_timer(loop, "build_caches", spent, "build_and_fill_caches_s")
    _wrap_timer(loop.Trainer, "save_adapter", spent, "save_adapter_s")
    _wrap_timer(loop.Trainer, "save_state", spent, "save_state_s")
    _wrap_timer(loop.Trainer, "train_step", spent, "train_steps_s")
    work = tempfile.mkdtemp(prefix="sdlora-breakdown-")
    cfg = config_from_dict(trainer_config(toy_params(args.steps, work)))
    if args.set:
        raw = trainer_config(toy_params(args.steps, work))
        for item in args.set:
            key, value = item.split("=", 1)
            section, name = key.split(".", 1)
            raw.setdefault(section, {})[name] = json.loads(value) if value not in ("true", "false") else value == "true"
        cfg = config_from_dict(raw)
    t = time.perf_counter()
    trainer = loop.Trainer(cfg, log=lambda text: None)
    out["trainer_init_s"] = time.perf_counter() - t
    t = time.perf_counter()
    trainer.run()
    out["run_s"] = time.perf_counter() - t
    out.update(spent)
    out["whole_process_s"] = time.time() - started
    if args.profile_steps:
        out.update(profile_steps(trainer, args.profile_steps))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
