"""The random numbers and the loss of one training step (the schedule math is in ``sdlora.models.noise``).

- ``draw``: the step's random numbers for a whole global batch from one generator (so every process of a
  data-parallel run draws the same and takes its rows): timesteps uniform in [min_t, max_t), Gaussian
  noise, plus the noise offset (a per-channel constant: offset·N(0,1) of shape (B, C, 1, 1)) and multires
  ("pyramid") noise (noise + Σ_i discount^i · upsample(N(0,1) at size/r^i), r ~ U[2, 4), rescaled to unit
  std).
- ``per_sample_loss``: l2, l1 or pseudo-Huber (2c(√((p−t)² + c²) − c)), averaged per sample over the
  pixels a mask keeps (all of them without a mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdlora.trainers.config import NoiseSection


@dataclass
class Draw:
    noise: torch.Tensor  # (B, C, H, W)
    timesteps: torch.Tensor  # (B,) int64

    def rows(self, start: int, stop: int) -> "Draw":
        return Draw(self.noise[start:stop], self.timesteps[start:stop])


def draw(shape: tuple[int, ...], generator: torch.Generator, cfg: NoiseSection, min_t: int, max_t: int) -> Draw:
    """Noise and timesteps for a global batch of latents of ``shape``, on the CPU."""
    b, c, h, w = shape
    timesteps = torch.randint(min_t, max_t, (b,), generator=generator)
    noise = torch.randn(shape, generator=generator)
    if cfg.multires_iterations:
        for i in range(1, cfg.multires_iterations + 1):
            r = 2.0 + 2.0 * float(torch.rand((), generator=generator))
            hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
            low = torch.randn((b, c, hn, wn), generator=generator)
            noise = noise + F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) * cfg.multires_discount ** i
            if hn == 1 or wn == 1:
                break
        noise = noise / noise.std()
    if cfg.offset:
        noise = noise + cfg.offset * torch.randn((b, c, 1, 1), generator=generator)
    return Draw(noise, timesteps)


def per_sample_loss(pred: torch.Tensor, tgt: torch.Tensor, kind: str = "l2", huber_c: float = 0.1,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) loss of each sample; ``mask`` (B, 1, H, W) in [0, 1] weights pixels."""
    diff = pred.float() - tgt.float()
    if kind == "l1":
        err = diff.abs()
    elif kind == "huber":
        err = 2 * huber_c * (torch.sqrt(diff ** 2 + huber_c ** 2) - huber_c)
    else:
        err = diff ** 2
    dims = tuple(range(1, err.dim()))
    if mask is None:
        return err.mean(dim=dims)
    m = mask.float().expand_as(err)
    return (err * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1e-6)
