"""Helpers for the trainer tests: tiny model folders, generated image folders, configs.

Tiny models are saved once per test session as diffusers folders (tokenizer included) and trained on
like any user model. Images are PNGs drawn with PIL: a coloured background with a square, so they are
easy to tell apart; training configs use 16 px (8×8 latents) unless a test needs more. Training runs on one CPU thread: on a shared 2-core machine the
tiny models are far faster single-threaded (less waiting between threads).
"""
from __future__ import annotations

import atexit
import pathlib
import shutil
import sys
import tempfile

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from tiny import tiny_pipeline  # noqa: E402

_MODELS: dict[str, pathlib.Path] = {}
_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="sdlora_train_models_"))
atexit.register(shutil.rmtree, _ROOT, True)


def model_dir(family: str) -> pathlib.Path:
    """A saved tiny pipeline of ``family`` (made once per session)."""
    if family not in _MODELS:
        path = _ROOT / family
        tiny_pipeline(family).save_pretrained(path)
        _MODELS[family] = path
    return _MODELS[family]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 200, 40), (200, 60, 200), (40, 200, 200)]


def draw(size: tuple[int, int] = (32, 32), index: int = 0, mode: str = "RGB") -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, COLOURS[index % len(COLOURS)])
    square = Image.new("RGB", (w // 2, h // 2), COLOURS[(index + 2) % len(COLOURS)])
    img.paste(square, (w // 4 + (index % 2) * w // 8, h // 4))
    return img.convert(mode) if mode != "RGB" else img


def make_images(folder: pathlib.Path, n: int = 4, size: tuple[int, int] = (32, 32), caption: bool = True,
                prefix: str = "img") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        draw(size, i).save(folder / f"{prefix}{i}.png")
        if caption:
            (folder / f"{prefix}{i}.txt").write_text(f"a square, colour {i}", encoding="utf-8")
    return folder


def config(tmp: pathlib.Path, family: str = "sd1", data: pathlib.Path | None = None, **sections) -> dict:
    """A raw config dict for a tiny run: 16 px, rank 4, lr 1e-3, no TensorBoard; ``sections`` update it."""
    raw = {
        "model": {"path": str(model_dir(family))},
        "network": {"algo": "lora", "rank": 4},
        "dataset": {"path": str(data or make_images(tmp / "data", size=(16, 16))), "resolution": 16, "min_image_side": 8,
                    "bucket_step": 8, "trigger": "sks"},
        "training": {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "seed": 7},
        "output": {"dir": str(tmp / "out"), "name": "tiny", "tensorboard": False, "save_dtype": "fp32"},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def write_toml(path: pathlib.Path, raw: dict) -> pathlib.Path:
    from sdlora.trainers.config import config_from_dict, dump_toml

    path.write_text(dump_toml(config_from_dict(raw)), encoding="utf-8")
    return path


def quiet(_text: str) -> None:
    pass
