"""sdlora.memory: freed host memory is kept for reuse (no page faults on every step's activations)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource
import torch
from sdlora.memory import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
x = torch.randn(1, 32, 256, 256)  # 8 MiB activations, made and freed by every call, as in a step
faults = []
with torch.no_grad():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = conv(torch.nn.functional.silu(conv(x)))
        del y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": keep_freed_memory(), "faults": faults}))
"""


def _probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, **env), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_memory_is_reused_without_page_faults():
    kept = _probe(SDLORA_MALLOC="")
    assert kept["applied"] is True and kept["again"] is True
    system = _probe(SDLORA_MALLOC="system")  # the opt-out: glibc's defaults map and unmap them every time
    assert system["applied"] is False
    assert min(system["faults"][1:]) > 5_000  # ~10,000-12,000 pages faulted in anew by every call
    # kept: after the first call its blocks are reused; four calls fault in less than ONE call with the defaults
    assert sum(kept["faults"][1:]) < min(system["faults"][1:]), (kept, system)
