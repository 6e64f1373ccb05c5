"""Sample images during training from a prompt file in kohya's syntax.

One prompt per line; ``#`` lines and blank lines are skipped. Options follow the prompt, each introduced
by `` --``: ``--n`` negative prompt, ``--w`` / ``--h`` size, ``--d`` seed, ``--l`` CFG scale, ``--s``
steps, ``--ss`` sampler (sdlora's sampler names). Example:
``a photo of sks dog on a beach --n blurry --w 512 --h 768 --d 7 --l 6 --s 25``.

Images are made by ``sdlora.generate.generate`` — the inference code users run — with the training
Network attached in bypass mode and in eval mode, from an explicit seed, and without touching the global
RNG state (so sampling never changes the training run). Each PNG carries A1111's parameters text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlora.errors import ConfigError
from sdlora.models import BaseModel
from sdlora.trainers.config import SampleSection

_OPTION = re.compile(r"^(\w+)\s*(.*)$", re.S)


@dataclass
class SamplePrompt:
    prompt: str
    negative: str
    width: int
    height: int
    seed: int
    cfg_scale: float
    steps: int
    sampler: str


def parse_line(line: str, defaults: SampleSection, resolution: tuple[int, int], where: str = "") -> SamplePrompt | None:
    """One prompt line -> SamplePrompt (None for blank and comment lines); raises ConfigError on bad options."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split(" --")
    if line.startswith("--"):
        parts = [""] + line[2:].split(" --")
    p = SamplePrompt(prompt=parts[0].strip(), negative=defaults.negative,
                     width=defaults.width or resolution[0], height=defaults.height or resolution[1],
                     seed=defaults.seed, cfg_scale=defaults.cfg_scale, steps=defaults.steps,
                     sampler=defaults.sampler)
    for part in parts[1:]:
        m = _OPTION.match(part.strip())
        if not m:
            continue
        name, value = m.group(1), m.group(2).strip()
        try:
            if name == "n":
                p.negative = value
            elif name == "w":
                p.width = int(value)
            elif name == "h":
                p.height = int(value)
            elif name == "d":
                p.seed = int(value)
            elif name == "l":
                p.cfg_scale = float(value)
            elif name == "s":
                p.steps = int(value)
            elif name == "ss":
                p.sampler = value
            else:
                raise ConfigError(f"{where}unknown option --{name}; use --n --w --h --d --l --s --ss")
        except ValueError:
            raise ConfigError(f"{where}--{name} {value!r} is not a number") from None
    if p.width % 8 or p.height % 8 or p.width < 8 or p.height < 8 or p.steps < 1:
        raise ConfigError(f"{where}size {p.width}x{p.height} and steps {p.steps}: sizes must be multiples of 8 and "
                          "steps at least 1")
    from sdlora.inference import samplers

    try:
        samplers.label(p.sampler)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return p


def read_prompts(cfg: SampleSection, resolution: tuple[int, int]) -> list[SamplePrompt]:
    path = Path(cfg.prompts)
    if not path.is_file():
        raise ConfigError(f"sample.prompts = {cfg.prompts!r}: no such file; write one prompt per line")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        p = parse_line(line, cfg, resolution, f"{path}, line {n}: ")
        if p is not None:
            prompts.append(p)
    if not prompts:
        raise ConfigError(f"sample.prompts = {cfg.prompts!r}: the file holds no prompt")
    return prompts


def generate(model: BaseModel, network: torch.nn.Module, prompts: list[SamplePrompt], out_dir: Path, tag: str
             ) -> list:
    """One image per prompt into ``out_dir`` as ``<tag>-<i>.png``; returns (path, PIL image) pairs."""
    from sdlora.inference.generate import generate as render, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = network.training
    network.eval()
    scheduler = model.pipe.scheduler
    results = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            for i, p in enumerate(prompts):
                image = render(model, p.prompt, p.negative, seed=p.seed, steps=p.steps, cfg=p.cfg_scale,
                               sampler=p.sampler, width=p.width, height=p.height, progress=False)[0]
                results.append((save_png(image, out_dir / f"{tag}-{i}.png"), image.image))
    finally:
        model.pipe.scheduler = scheduler
        network.train(was_training)
    return results
