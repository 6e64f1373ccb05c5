"""The deterministic validation loss of a folder of held-out images (any model: SD 1.x, 2.x, XL).

``ValidationSet``: held-out images encoded once as latents, with their captions (``.txt`` files beside
them); ``loss`` is the diffusion loss at fixed timesteps with fixed noise — the same number every time for
the same model, adapter and strength, so base vs adapter, strengths and checkpoints compare directly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdlora.errors import ConfigError
from sdlora.files.images import IMAGE_EXTENSIONS, BadImage, decode
from sdlora.models import BaseModel
from sdlora.models.encode import encode_pixels, encode_text, time_ids
from sdlora.models.noise import add_noise, fixed_noise, schedule_alphas, target

TIMESTEPS = (100, 300, 500, 700, 900)


@dataclass
class ValidationSet:
    """Held-out images as latents (the VAE is never adapted, so they are encoded once) and their captions."""

    name: str
    latents: torch.Tensor  # (N, C, h, w) scaled latents
    captions: list[str]
    resolution: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @classmethod
    def from_images(cls, model: BaseModel, name: str, images: Sequence[Image.Image], captions: Sequence[str],
                    resolution: int | None = None, skipped=None) -> "ValidationSet":
        if not images:
            raise ConfigError(f"validation set {name!r} has no usable image")
        res = int(resolution or model.default_size)
        pixels = torch.stack([_square(img, res) for img in images])
        scale = float(model.vae.config.scaling_factor)
        lat = torch.cat([encode_pixels(model.vae, pixels[i:i + 16], scale) for i in range(0, len(pixels), 16)])
        return cls(name, lat.cpu(), list(captions), res, list(skipped or []))

    @classmethod
    def from_folder(cls, model: BaseModel, folder: str | Path, name: str | None = None,
                    resolution: int | None = None) -> "ValidationSet":
        """Every image of ``folder`` with its ``.txt`` caption (empty when missing); unreadable images are
        skipped and listed in ``skipped``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"validation folder {folder} does not exist; give a folder of held-out images "
                              "with .txt captions beside them")
        images, captions, skipped = [], [], []
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            try:
                images.append(decode(path).image)
            except BadImage as exc:
                skipped.append((path.name, str(exc)))
                continue
            txt = path.with_suffix(".txt")
            captions.append(txt.read_text(encoding="utf-8").strip() if txt.is_file() else "")
        if not images:
            raise ConfigError(f"validation folder {folder} holds no readable image"
                              + (f" ({len(skipped)} skipped: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
        return cls.from_images(model, name or folder.name, images, captions, resolution, skipped)

    @torch.no_grad()
    def loss(self, model: BaseModel, *, seed: int = 0, timesteps: Sequence[int] = TIMESTEPS, batch: int = 32
             ) -> float:
        """Mean MSE between the UNet's prediction and its target over every image × timestep; the noise of
        image i at timestep t comes from a generator seeded with (seed, i, t)."""
        unet = model.unet
        param = next(unet.parameters())
        alphas = schedule_alphas(model.base_scheduler)
        pairs = [(i, int(t)) for i in range(len(self.captions)) for t in timesteps]
        total = 0.0
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            idx = [i for i, _ in chunk]
            ts = torch.tensor([t for _, t in chunk])
            lat = self.latents[idx]
            noise = torch.cat([fixed_noise((1, *lat.shape[1:]), seed, i, t) for i, t in chunk])
            hidden, pooled = encode_text(model, [self.captions[i] for i in idx])
            added = None
            if pooled is not None:
                r = self.resolution
                added = {"text_embeds": pooled.to(param.dtype),
                         "time_ids": time_ids([(r, r)] * len(chunk), [(0, 0)] * len(chunk), (r, r)).to(
                             param.device, param.dtype)}
            noisy = add_noise(lat, noise, ts, alphas)
            pred = unet(noisy.to(param.device, param.dtype), ts.to(param.device), hidden.to(param.dtype),
                        added_cond_kwargs=added, return_dict=False)[0].float().cpu()
            tgt = target(lat, noise, ts, alphas, model.prediction_type)
            total += float(((pred - tgt) ** 2).mean(dim=(1, 2, 3)).sum())
        return total / len(pairs)


def _square(img: Image.Image, res: int) -> torch.Tensor:
    """Centre square crop, resized to ``res``, as (3, res, res) in [-1, 1]."""
    w, h = img.size
    s = min(w, h)
    img = img.convert("RGB").crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != res:
        img = img.resize((res, res), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
