"""Issue 16 at SD 1.5 size: the per-step figures with caches on and the inference ratios, side by side:

    python benchmarks/sd15.py [--reps 2] [--steps 4] [--rounds 16] [--skip-training] [--skip-inference]
                              [--json out.json]

Workload (b)'s settings (the full-size SD 1.5 architecture with random weights, built once into the work
folder; datasets/demo resized to 256 px; batch 1, gradient checkpointing, fp32, LoRA r8 on the attention
layers, one torch thread per process):

- training, each repetition a fresh process (benchmarks/job.py, sides alternating, order reversed every
  other repetition): ``sdlora train`` with its latent and text caches on against the diffusers+PEFT recipe
  (VAE and text encoder every step); step time (median over the steps after the first), peak RSS;
  ratios recipe/sdlora for the step (>1: sdlora faster) and sdlora/recipe for memory (<1: less);
- inference, one process: the UNet forward at 256 px (32×32 latents, batch 1) with the bake's LoRA (rank
  16, attn-mlp) at 0.8 — base, bypass and fused on one model, ``--rounds`` interleaved rounds
  (interleaved.py ``unet_forward``): fused/base and bypass/base, medians of the per-round ratios and IQR.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fixtures  # noqa: E402
from runner import Job, Runner, alternate  # noqa: E402
from whole import quartiles  # noqa: E402
from workloads import sd15_train_params  # noqa: E402
from measure import median  # noqa: E402


def paired(a: list[float], b: list[float]) -> dict:
    pairs = [y / x for x, y in zip(a, b) if x and y]
    return {"ratio": median(pairs) if pairs else None, "iqr": quartiles(pairs), "pairs": pairs}


def inference(runner: Runner, sd15: dict, rounds: int) -> dict | None:
    """The UNet-forward job (base, bypass, fused in one process): its figures, printed; None if it failed."""
    ip = {"model": sd15["folder"], "lora": sd15["lora"], "strength": 0.8, "batch": 1, "latent": 32,
          "rounds": rounds}
    inf = Job("b16.inference", "UNet forward: base, bypass, fused, one process", "interleaved.unet_forward", ip)
    print(f"SD 1.5 UNet forward (base, bypass, fused), {rounds} interleaved rounds", flush=True)
    res = runner.run(inf)
    if res is None:
        return None
    for case in ("bypass", "fused"):
        lo, hi = res[f"sdlora.unet.{case}_over_base_iqr"]
        print(f"  {case}/base: {res[f'sdlora.unet.{case}_over_base']:.3f}x (IQR {lo:.3f}-{hi:.3f}); "
              f"base {res['sdlora.unet.base_s']:.2f} s/forward", flush=True)
    return {k: v for k, v in res.items() if k.startswith("sdlora.unet.") or k == "hooks"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sdlora-bench"))
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    logdir = work / "logs" / ("sd15-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    logdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, args.threads, logdir, 3600)
    fixture = Job("fixture", "SD 1.5 fixtures", "fixture.sd15", {"work": str(work)})
    sd15 = runner.run(fixture)
    if sd15 is None:
        print("could not build the SD 1.5 fixtures: " + "; ".join(fixture.errors))
        return 1
    out: dict = {}
    if not args.skip_training:
        p = sd15_train_params(sd15, fixtures.demo_dataset(work, 256), 256, "no", False, work / "runs" / "b16")
        p.update(steps=args.steps, warmup=1)
        sd = Job("b16.lora", "sdlora train, caches on", "sdlora.train", dict(p, cache=True))
        peer = Job("b16.lora", "diffusers+PEFT recipe", "peft.train", dict(p, cache=False))
        print(f"SD 1.5 LoRA training at 256 px, {args.reps} repetitions per side, {args.steps} steps", flush=True)
        alternate(runner, [sd, peer], args.reps)
        step_sd, step_peer = sd.values("step_s_median"), peer.values("step_s_median")
        rss_sd, rss_peer = sd.values("peak_rss"), peer.values("peak_rss")
        out["step"] = dict(paired(step_sd, step_peer), sdlora=median(step_sd), recipe=median(step_peer))
        out["rss"] = dict(paired(rss_peer, rss_sd), sdlora=median(rss_sd), recipe=median(rss_peer))
        s, r = out["step"], out["rss"]
        print(f"  step: sdlora {s['sdlora']:.2f} s, recipe {s['recipe']:.2f} s, recipe/sdlora {s['ratio']:.3f}x "
              f"(IQR {s['iqr'][0]:.3f}-{s['iqr'][1]:.3f})", flush=True)
        print(f"  peak RSS: sdlora {r['sdlora'] / 2**20:,.0f} MiB, recipe {r['recipe'] / 2**20:,.0f} MiB, "
              f"sdlora/recipe {r['ratio']:.3f}x", flush=True)
    if not args.skip_inference:
        out["inference"] = inference(runner, sd15, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
