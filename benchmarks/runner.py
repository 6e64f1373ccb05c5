"""Running measured jobs: a ``Job`` (one side of a comparison and its results) and the ``Runner`` that runs
each repetition in a fresh process (benchmarks/job.py), logging to one folder per benchmark run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import median

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Job:
    group: str  # what is compared, e.g. "a.lora"
    label: str  # "sdlora (caching on)", "diffusers+PEFT", ...
    kind: str  # a job.py kind
    params: dict
    results: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.results if r.get(key) is not None]

    def med(self, key: str) -> float | None:
        v = self.values(key)
        return median(v) if v else None


class Runner:
    def __init__(self, work: Path, threads: int, log: Path, timeout: int, preimport: bool = True):
        self.work, self.threads, self.logdir, self.timeout = work, threads, log, timeout
        self.preimport = preimport  # job.py's common imports before each job (False: each side's own only)
        self.count = 0

    def run(self, job: Job) -> dict | None:
        """One job in a fresh process; its result (with ``ttfs`` and ``wall_s``), or None on failure."""
        self.count += 1
        name = f"{self.count:03d}-{job.group}-{job.kind}".replace("/", "_")
        spec = self.logdir / f"{name}.spec.json"
        result = self.logdir / f"{name}.result.json"
        log = self.logdir / f"{name}.log"
        spec.write_text(json.dumps({"kind": job.kind, "params": job.params, "threads": self.threads,
                                    "preimport": self.preimport}, indent=1))
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   PYTHONUNBUFFERED="1")
        spawned = time.time()
        try:
            with open(log, "w") as out:
                proc = subprocess.run([sys.executable, str(HERE / "job.py"), str(spec), str(result)], stdout=out,
                                      stderr=subprocess.STDOUT, env=env, cwd=str(REPO), timeout=self.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.time() - spawned
        if rc != 0 or not result.is_file():
            tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-6:]
            job.errors.append(f"exit {rc}: " + " | ".join(tail))
            print(f"  [{name}] {job.label}: FAILED ({rc}); log {log}", flush=True)
            return None
        res = json.loads(result.read_text())
        res["wall_s"] = wall
        if res.get("first_step_at"):
            res["ttfs"] = res["first_step_at"] - spawned
        job.results.append(res)
        print(f"  [{name}] {job.label}: {_brief(res)} ({wall:.0f} s)", flush=True)
        return res


def _brief(r: dict) -> str:
    if "steps_per_s" in r:
        return (f"{r['steps_per_s']:.3f} steps/s, first step {r.get('ttfs', 0):.1f} s, "
                f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB")
    if "labels" in r:
        return ", ".join(f"{label} {r[label + '.step_s'] * 1e3:.0f}" for label in r["labels"]) + " ms/step"
    if "sdlora.base.s_per_image" in r:
        return ", ".join(f"{k[:-12]} {v:.3f}" for k, v in r.items() if k.endswith(".s_per_image")) + " s/image"
    if "sdlora.unet.base_s" in r:
        return ", ".join(f"{c} {r[f'sdlora.unet.{c}_s']:.2f}" for c in ("base", "bypass", "fused")) + " s/forward"
    if "sdlora.lora.fwd_bwd_s" in r:
        return ", ".join(f"{k[:-10]} {v * 1e3:.0f}" for k, v in r.items() if k.endswith(".fwd_bwd_s")) + " ms"
    if "seconds" in r:
        return f"{r['seconds']:.2f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB"
    return "ok"


def alternate(runner: Runner, jobs: list[Job], reps: int) -> None:
    """``reps`` rounds over ``jobs`` in order, reversed every other round."""
    for rep in range(reps):
        for job in (jobs if rep % 2 == 0 else list(reversed(jobs))):
            runner.run(job)

