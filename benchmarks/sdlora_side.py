"""sdlora's side of every benchmark, driven only through its public API.

- ``train``: a TOML-equivalent config (``trainer_config``) -> ``trainers.config.config_from_dict`` ->
  ``trainers.loop.Trainer``; one callback on ``Trainer.on_step`` stamps the end of each optimiser step, so
  steps/s is timed from outside without touching the loop. Time to first step is measured by the runner
  from the moment it starts the process (imports, model opening, data scan, caching included).
- ``inference_setup``: ``open_model`` + ``AdapterStack`` (add / fuse / unfuse) + ``generate``; timed
  interleaved with the peer's in one process by ``interleaved.py``.
- ``bake``: ``sdlora.bake.bake`` on a single file; ``plain_load_save``: safetensors ``load_file`` +
  ``save_file`` of the same file, the floor any tool that rewrites a checkpoint has to pay.
"""
from __future__ import annotations

import time
from pathlib import Path

from measure import StepClock, median, timed


def trainer_config(p: dict) -> dict:
    """The sdlora training config (as the TOML tables) for the benchmark settings ``p``."""
    net = {"algo": p["algo"], "rank": p["rank"], "alpha": float(p["alpha"]), "preset": p["preset"]}
    if p.get("conv_rank") is not None:
        net["conv_rank"] = p["conv_rank"]
        net["conv_alpha"] = float(p["conv_alpha"])
    if p.get("factor") is not None:
        net["factor"] = p["factor"]
    model = {"path": p["model"]}
    if p.get("vae_dtype"):
        model["vae_dtype"] = p["vae_dtype"]
    return {
        "model": model,
        "network": net,
        "dataset": {"path": p["data"], "resolution": p["resolution"], "buckets": False,
                    "min_image_side": p["resolution"], "flip": bool(p.get("flip", False))},
        "training": {"max_steps": p["steps"], "batch_size": p["batch"], "learning_rate": p["lr"], "seed": p["seed"],
                     "mixed_precision": p["precision"], "gradient_checkpointing": p["checkpointing"],
                     "cache_latents": p["cache"], "cache_text_outputs": p["cache"], "max_grad_norm": 1.0,
                     **p.get("training_extra", {})},  # speed levers under test (whole.py --set)
        "optimizer": {"name": "adamw", "weight_decay": 0.01, "scheduler": "constant"},
        "output": {"dir": p["out"], "name": "bench", "tensorboard": False},
    }


def train(p: dict, on_step=None) -> dict:
    """A Trainer run; ``on_step()`` (if given) is called after every optimiser step, after the clock."""
    import torch

    from sdlora.trainers.config import config_from_dict
    from sdlora.trainers.loop import Trainer

    cfg = config_from_dict(trainer_config(p))
    clock = StepClock()
    trainer = Trainer(cfg, log=lambda text: None)
    trainer.on_step.append(lambda tr, step: clock.tick())
    if on_step is not None:
        trainer.on_step.append(lambda tr, step: on_step())
    result = trainer.run()
    out = clock.summary(p["warmup"], p["batch"])
    losses = list(result.losses.values())
    out.update(trainable_params=sum(t.numel() for t in trainer.params), adapted_layers=len(trainer.network),
               skipped_steps=len(result.skipped), final_loss=losses[-1] if losses else None,
               losses_finite=all(torch.isfinite(torch.tensor(losses)).tolist()) if losses else False,
               cache=result.cache)
    return out


# -------------------------------------------------------------------------------------- inference
def inference_setup(p: dict) -> tuple[dict, dict]:
    """The four inference cases as callables ``case(seed)`` (one image each) — base, bypass with 1 and 4
    LoRAs, fused (4 LoRAs) — on four models side by side, and the timings of LoRA load+apply (one file onto
    a model, 8 times) and fuse/unfuse of the 4 LoRAs (``fuse_reps`` times)."""
    from sdlora.inference.generate import generate
    from sdlora.models import open_model
    from sdlora.inference.stack import AdapterStack

    files, strength = p["loras"], p["strength"]

    def fresh():
        return open_model(p["model"], dtype="fp32")

    warm = AdapterStack(fresh())  # first use pays one-off imports and allocator warm-up
    warm.add(files[0], name="warm", strength=strength)
    warm.fuse()
    warm.unfuse()
    base, one, four, fused = fresh(), fresh(), fresh(), fresh()
    AdapterStack(one).add(files[0], name="a0", strength=strength)
    s4, sf = AdapterStack(four), AdapterStack(fused)
    load_s = []
    for i, f in enumerate(files):
        load_s.append(timed(s4.add, f, name=f"a{i}", strength=strength)[0])
        load_s.append(timed(sf.add, f, name=f"a{i}", strength=strength)[0])
    fuse_s, unfuse_s = [], []
    for _ in range(p["fuse_reps"]):
        fuse_s.append(timed(sf.fuse)[0])
        unfuse_s.append(timed(sf.unfuse)[0])
    sf.fuse()

    def case(model):
        return lambda seed: generate(model, p["prompt"], seed=seed, steps=p["steps"], cfg=7.0, sampler="euler a",
                                     width=p["size"], height=p["size"], count=1, progress=False)

    cases = {"base": case(base), "bypass1": case(one), "bypass4": case(four), "fused4": case(fused)}
    ops = {"load_apply_s": median(load_s), "fuse_s": median(fuse_s), "unfuse_s": median(unfuse_s),
           "adapted_layers": len(s4["a0"].network)}
    return cases, ops


# ------------------------------------------------------------------------------------------- bake
def bake(p: dict) -> dict:
    """sdlora.bake of one LoRA into a single file. Parts of it are also timed (wrappers around ``os.fsync``,
    ``os.posix_fadvise`` (the write-back sdlora.streaming starts while writing), the sha256 sdlora.streaming
    computes when asked (bake does not ask), and ``fold_weight``/``fold_bias`` as sdlora.bake calls them;
    ~1,100 calls, negligible overhead) to tell where its time goes."""
    import os

    import sdlora.tools.bake as sd_bake_module
    import sdlora.files.streaming as streaming
    from sdlora.inference.stack import AdapterSpec

    spent = {"fsync_s": 0.0, "writeback_s": 0.0, "sha256_s": 0.0, "fold_s": 0.0}

    def timing(fn, key):
        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapped

    class _Hash:
        def __init__(self, inner):
            self.inner = inner
            self.update = timing(inner.update, "sha256_s")

        def hexdigest(self):
            return self.inner.hexdigest()

    class _Hashlib:
        def __init__(self, real):
            self.real = real

        def sha256(self, *a):
            return _Hash(self.real.sha256(*a))

        def __getattr__(self, name):
            return getattr(self.real, name)

    real_fsync, real_fadvise = os.fsync, getattr(os, "posix_fadvise", None)
    os.fsync = timing(real_fsync, "fsync_s")
    if real_fadvise is not None:
        os.posix_fadvise = timing(real_fadvise, "writeback_s")
    streaming.hashlib = _Hashlib(streaming.hashlib)
    sd_bake_module.fold_weight = timing(sd_bake_module.fold_weight, "fold_s")
    sd_bake_module.fold_bias = timing(sd_bake_module.fold_bias, "fold_s")
    out = Path(p["out"])
    try:
        t = time.perf_counter()
        sd_bake_module.bake(p["model"], [AdapterSpec(p["lora"], p["strength"])], out, progress=False)
        seconds = time.perf_counter() - t
    finally:
        os.fsync = real_fsync
        if real_fadvise is not None:
            os.posix_fadvise = real_fadvise
    size = out.stat().st_size
    out.unlink()
    return {"seconds": seconds, "out_bytes": size, **spent}


def plain_load_save(p: dict) -> dict:
    import os

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = Path(p["out"])
    t = time.perf_counter()
    with safe_open(p["model"], framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(p["model"]), str(out), metadata=metadata)
    seconds = time.perf_counter() - t
    # Not part of ``seconds``: what making this output durable would add (sdlora's bake fsyncs its own).
    t = time.perf_counter()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_s = time.perf_counter() - t
    size = out.stat().st_size
    out.unlink()
    return {"seconds": seconds, "out_bytes": size, "fsync_s": fsync_s}
