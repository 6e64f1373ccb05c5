"""sdlora against what users would pick instead, measured side by side, in one command:

    python benchmarks/run.py [--quick] [--workloads a,b,c] [--reps N] [--threads N] [--note TEXT]

Workloads
  a  the embedded default model's architecture on datasets/demo (32 px, batch 4, fp32): LoRA training
     (sdlora with and without caching vs the diffusers+PEFT recipe), LoHa and LoKr training (sdlora vs
     lycoris-lora on the same layers), inference (base, bypass with 1 and 4 LoRAs, fused; load+apply;
     fuse/unfuse; sdlora vs diffusers+PEFT), bake vs a plain load+save of the same single file.
  b  the full-size SD 1.5 architecture (random weights, no download) at 256 px, batch 1, gradient
     checkpointing, fp32 on the CPU: LoRA step time and peak memory (sdlora vs the PEFT recipe, both
     encoding every step); inference: the UNet forward at 256 px (32×32 latents), base / bypass with one
     LoRA (rank 16, attn-mlp) / fused, interleaved in one process (where the bypass and fused targets are
     judged: on (a)'s toy model they are shown for information); bake vs plain load+save of the 2.1 GB fp16
     single file.
  c  the same as b at 512 px with fp16 mixed precision on a GPU, when one is visible (else recorded as
     not run).

Every measured job runs in a fresh process (benchmarks/job.py), sdlora and peer alternating, the order
reversed on every other repetition; figures are medians over the repetitions and ratios are
sdlora / peer from this same run, shown with the range of the per-repetition paired ratios. Inference
and a UNet forward+backward diagnostic hold both sides in one process and interleave them call by call
(benchmarks/interleaved.py), which keeps their ratios steady on a shared machine. Writes
benchmarks/RESULTS.md (machine, versions, settings, the table, why each missed target was missed), puts
the table into benchmarks/README.md, and prints it.

The parts: runner.py (Job, Runner: one fresh process per repetition), workloads.py (what a, b and c run),
rows.py (the table's rows and its markdown), notes.py (why a missed target was missed), report.py
(RESULTS.md and the README's table). This file parses the options and runs them in order.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from notes import miss_notes  # noqa: E402
from report import machine_info, update_readme, versions, write_report  # noqa: E402
from rows import build_rows, table  # noqa: E402
from runner import Job, Runner  # noqa: E402
from workloads import workload_a, workload_b, workload_c  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repetitions (about 10 minutes on 2 cores)")
    ap.add_argument("--workloads", default="a,b,c", help="comma-separated: a (default model), b (SD 1.5, CPU), c (GPU)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions per side (default depends on workload and --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measured process (0: torch's default)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sdlora-bench"),
                    help="fixtures and scratch files (reused between runs)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the fixtures")
    ap.add_argument("--note", default="", help="a sentence about the conditions, written into RESULTS.md")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measured process")
    args = ap.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = set(args.workloads) - {"a", "b", "c"}
    if bad:
        ap.error(f"unknown workload(s) {', '.join(sorted(bad))}: use a, b, c")
    return args


def make_runner(args: argparse.Namespace) -> tuple[Runner, Path]:
    """The work folder (emptied with ``--fresh``), a fresh log folder in it, and a Runner logging there."""
    work = Path(args.workdir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    logdir = work / "logs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True)
    shutil.rmtree(work / "runs", ignore_errors=True)
    print(f"sdlora benchmarks: workloads {','.join(args.workloads)}{' (quick)' if args.quick else ''}; "
          f"work folder {work}; logs {logdir}", flush=True)
    return Runner(work, args.threads, logdir, args.timeout), work


def run_workloads(runner: Runner, args: argparse.Namespace, work: Path, gpu: str | None,
                  machine: dict) -> tuple[dict | None, dict | None, dict | None, str]:
    """Builds the fixtures the chosen workloads need and runs them: (A, B, C, note on c when not run)."""
    A = B = C = None
    c_note = ""
    fx = Job("fixtures", "toy model, single file, LoRAs", "fixture.toy", {"work": str(work)})
    toy = runner.run(fx) if "a" in args.workloads else None
    sd15 = None
    if "b" in args.workloads or ("c" in args.workloads and gpu):
        f15 = Job("fixtures", "SD 1.5 folder, single file, LoRA", "fixture.sd15", {"work": str(work)})
        sd15 = runner.run(f15)
    if toy:
        A = workload_a(runner, args, work, toy)
    if sd15 and "b" in args.workloads:
        B = workload_b(runner, args, work, sd15)
        B["single_bytes"] = sd15["single_bytes"]
    if "c" in args.workloads:
        if gpu and sd15:
            C = workload_c(runner, args, work, sd15)
            machine["gpu"] = gpu
        else:
            c_note = "not run: no CUDA device is visible on this machine (the runner checks torch.cuda.is_available())."
    return A, B, C, c_note


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_start = os.getloadavg()[0]
    runner, work = make_runner(args)
    machine, vers = machine_info(args.threads), versions()
    A, B, C, c_note = run_workloads(runner, args, work, vers.get("cuda"), machine)
    rows = build_rows(A, B, C)
    notes = miss_notes(rows, A, B)
    out = Path(args.out)
    write_report(out, args, rows, notes, A, B, C, c_note, started, machine, vers, (load_start, os.getloadavg()[0]))
    if out.resolve() == (HERE / "RESULTS.md").resolve():
        update_readme(rows, "RESULTS.md")
    print()
    print(table(rows))
    if c_note:
        print(f"\n(c) {c_note}")
    for n in notes:
        print(f"\n- {n}")
    print(f"\nwrote {out} ({(time.time() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
