"""Host memory: keep freed memory in the process instead of handing it back to the system after every call.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, every block above the
mmap threshold is mapped fresh from the kernel and unmapped when freed, and the top of the heap is trimmed
back: a UNet forward or a training step that allocates and frees its activations then page-faults them in
anew each time. Measured on the SD 1.5 UNet at 256 px on the CPU (benchmarks/RESULTS.md, issue 16):
~166,000 minor page faults per forward with the defaults, ~0 with freed memory kept; and a fused model's
forward was 1.26x the base's only because holding the backups changed which blocks were mapped fresh.
(PyTorch's own CPU performance guides recommend jemalloc or tcmalloc for the same reason; this needs no
preload.)

``keep_freed_memory()`` tells glibc to serve every block from the heap and never trim it (``mallopt``
M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2^31-1). The process's peak memory stays about what it was (freed
blocks are reused); its resident size just does not shrink after a peak (as under A1111's tcmalloc
preload). ``open_model`` and the trainer call it, so generate, the studio and training get it. The
streaming tools (bake, merge, convert) do not: they allocate each tensor once, and a bake of the 2 GB
SD 1.5 file took 7.07 s with it against 6.76 s without (peak RSS +1%). ``SDLORA_MALLOC=system`` keeps
the C library's defaults. Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (once per process); True when it is in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("SDLORA_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _applied
