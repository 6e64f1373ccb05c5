"""Shared fixtures: tiny offline SD1-, SD2- and SDXL-shaped components (fresh, seeded, cheap)."""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

# The tiny test models run faster on one thread (no OpenMP spin when other processes share the cores).
torch.set_num_threads(1)

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # `import tiny` from any test file

from tiny import tiny_components  # noqa: E402


@pytest.fixture
def sd1() -> dict:
    return tiny_components("sd1")


@pytest.fixture
def sd2() -> dict:
    return tiny_components("sd2")


@pytest.fixture
def sdxl() -> dict:
    return tiny_components("sdxl")
