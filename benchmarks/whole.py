"""Whole-process time to a trained adapter: `sdlora train` (caches on) against the diffusers+PEFT recipe,
each repetition a fresh process (benchmarks/job.py), the two sides alternating, order reversed every other
repetition:

    python benchmarks/whole.py [--steps 25,200] [--reps 4] [--set training.channels_last=true]

Workload (a)'s settings: the embedded default model, datasets/demo at 32 px, batch 4, LoRA rank 8 on the
attention layers, AdamW, one torch thread per process. Per step count it prints (and writes as JSON with
``--json``) the median whole-process wall time of each side (process spawn -> exit, imports, model
opening, caching, steps and the final save included), time to the first step, steps/s, the paired
ratios recipe/sdlora (>1: sdlora faster) and their interquartile range.
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

from measure import median  # noqa: E402
from runner import Job, Runner, alternate  # noqa: E402
from workloads import toy_train_params  # noqa: E402
import fixtures  # noqa: E402


def quartiles(values: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentile, linear interpolation between the sorted values."""
    v = sorted(values)
    if not v:
        return float("nan"), float("nan")

    def at(q: float) -> float:
        pos = q * (len(v) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return at(0.25), at(0.75)


def summarize(sd: Job, peer: Job) -> dict:
    """Medians per side and the paired ratios peer/sdlora of the same repetition."""
    out: dict = {}
    for key in ("wall_s", "ttfs", "steps_per_s", "peak_rss"):
        a, b = sd.values(key), peer.values(key)
        pairs = [(y / x if key != "steps_per_s" else x / y) for x, y in zip(a, b) if x and y]
        if key == "peak_rss":
            pairs = [x / y for x, y in zip(a, b) if x and y]  # sdlora / recipe (<1: less memory)
        out[key] = {"sdlora": median(a), "recipe": median(b), "ratio": median(pairs),
                    "iqr": quartiles(pairs), "pairs": pairs}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="25,200")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="training.key=value for sdlora's side")
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args(argv)
    work = Path(tempfile.gettempdir()) / "sdlora-bench-whole"
    logdir = work / "logs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    # No common pre-imports: each process imports what its side imports, as a user's process does.
    runner = Runner(work, args.threads, logdir, 1800, preimport=False)
    model, _ = fixtures.toy_model(work)
    results = {}
    for steps in [int(s) for s in args.steps.split(",")]:
        base = dict(toy_train_params(str(model), False, work / f"run-{steps}"), steps=steps, warmup=min(5, steps // 5))
        extra = {k.removeprefix("training."): json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        sd = Job(f"whole.{steps}", "sdlora train, caches on", "sdlora.train", dict(base, training_extra=extra))
        peer = Job(f"whole.{steps}", "diffusers+PEFT recipe", "peft.train", dict(base, cache=False))
        print(f"{steps} steps, {args.reps} repetitions per side", flush=True)
        alternate(runner, [sd, peer], args.reps)
        results[steps] = summarize(sd, peer)
        r = results[steps]
        lo, hi = r["wall_s"]["iqr"]
        print(f"  whole process: sdlora {r['wall_s']['sdlora']:.1f} s, recipe {r['wall_s']['recipe']:.1f} s, "
              f"recipe/sdlora {r['wall_s']['ratio']:.2f}x (IQR {lo:.2f}-{hi:.2f})", flush=True)
        lo, hi = r["ttfs"]["iqr"]
        print(f"  time to first step: sdlora {r['ttfs']['sdlora']:.2f} s, recipe {r['ttfs']['recipe']:.2f} s, "
              f"recipe/sdlora {r['ttfs']['ratio']:.2f}x (IQR {lo:.2f}-{hi:.2f})", flush=True)
        lo, hi = r["steps_per_s"]["iqr"]
        print(f"  steps/s: sdlora {r['steps_per_s']['sdlora']:.2f}, recipe {r['steps_per_s']['recipe']:.2f}, "
              f"{r['steps_per_s']['ratio']:.2f}x (IQR {lo:.2f}-{hi:.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
