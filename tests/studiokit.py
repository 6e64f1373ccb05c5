"""Helpers of the studio tests: a studio root with the demo dataset and the quickstart preset."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from sdlora.models.configs import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


def make_root(root: Path, steps: int = 30) -> Path:
    """ROOT/datasets/demo (the 20 demo images), ROOT/configs/quickstart.toml (the repo's preset, on the
    embedded default model, ``steps`` steps, a sample at the end, no periodic saves, no TensorBoard)."""
    shutil.copytree(REPO / "datasets" / "demo", root / "datasets" / "demo")
    (root / "configs" / "prompts").mkdir(parents=True)
    prompts = (REPO / "configs" / "prompts" / "quickstart.txt").read_text().splitlines()
    (root / "configs" / "prompts" / "quickstart.txt").write_text(
        "\n".join(ln for ln in prompts[:2]) + "\n")  # one prompt: fast samples
    text = (REPO / "configs" / "quickstart.toml").read_text()
    text = text.replace('path = "../sdlora/assets/default"', f'path = "{DEFAULT_MODEL}"')
    text = re.sub(r"max_steps = \d+", f"max_steps = {steps}", text)
    text = re.sub(r"save_every_steps = \d+", "save_every_steps = 0", text)
    text = re.sub(r"\nevery_steps = \d+", f"\nevery_steps = {steps}", text)
    text = re.sub(r"\nsteps = \d+", "\nsteps = 4", text)
    text = text.replace('name = "quickstart"', 'name = "quickstart"\ntensorboard = false')
    (root / "configs" / "quickstart.toml").write_text(text)
    return root


def wait_for(predicate, timeout: float = 120.0, every: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fails the test after ``timeout`` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {getattr(predicate, '__name__', 'a condition')}")
