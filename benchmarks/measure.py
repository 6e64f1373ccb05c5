"""What every measured job shares: one torch thread, memory peaks, step clocks, the result file.

Each measured job runs in a fresh process (``job.py``), so its peak memory is its own: the peak resident
set (``VmHWM`` from /proc/self/status, or ``ru_maxrss`` where /proc is missing) read at the end of the job,
and on a GPU ``torch.cuda.max_memory_allocated``. ``baseline_rss`` is the resident set right after the
imports, before any model is touched: peaks are also reported above it, since the interpreter with torch,
diffusers and transformers imported already holds a few hundred MB.
"""
from __future__ import annotations

import os
import resource
import time


def status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile), in KiB; None if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kib = status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (bytes)."""
    kib = status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * 1024


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_vram_bytes() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


class StepClock:
    """Wall-clock stamps at the end of each optimiser step (after a device sync)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []  # time.time() (absolute: the parent compares it with the spawn time)

    def tick(self) -> None:
        sync()
        self.stamps.append(time.time())

    def summary(self, warmup: int, batch: int) -> dict:
        """Steps after the first ``warmup`` ones: steps/s, images/s, median step time; the first step's stamp."""
        s = self.stamps
        if len(s) <= warmup or warmup < 1:
            raise ValueError(f"need more than {warmup} steps (got {len(s)}) and a warm-up of at least 1")
        measured = len(s) - warmup
        span = s[-1] - s[warmup - 1]
        gaps = sorted(b - a for a, b in zip(s[warmup - 1:], s[warmup:]))
        return {"steps": len(s), "warmup_steps": warmup, "measured_steps": measured,
                "steps_per_s": measured / span, "images_per_s": measured * batch / span,
                "step_s_median": gaps[len(gaps) // 2], "first_step_at": s[0]}


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call, with device syncs around it."""
    sync()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return time.perf_counter() - t, out


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    if not n:
        return float("nan")
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def set_threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)
