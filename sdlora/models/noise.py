"""The noise schedule math shared by training and evaluation.

- ``add_noise``: x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε for latents (B, C, h, w) and timesteps (B,).
- ``target``: the noise for epsilon models, v = √ᾱ·ε − √(1−ᾱ)·x₀ for v-prediction models.
- ``snr_weight``: min-SNR-γ, min(SNR, γ)/SNR (epsilon) or min(SNR, γ)/(SNR + 1) (v-prediction).
- ``fixed_noise``: the noise of a deterministic loss figure — image ``index`` at timestep ``t`` always
  gets the same ε for the same ``seed``, however the images are batched.
- ``schedule_alphas``: ᾱ (1000,) float32 of a DDPM schedule built from a scheduler config.
"""
from __future__ import annotations

import warnings

import torch
from diffusers import DDPMScheduler


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """√ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""
    a = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def target(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
           prediction_type: str) -> torch.Tensor:
    if prediction_type == "v_prediction":
        a = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * latents
    return noise


def snr_weight(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float,
               prediction_type: str) -> torch.Tensor:
    """(B,) min-SNR-γ weights (ones when gamma is 0)."""
    if not gamma:
        return torch.ones(timesteps.shape[0], device=timesteps.device)
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def fixed_noise(shape: tuple[int, ...], seed: int, index: int, timestep: int) -> torch.Tensor:
    """ε of ``shape`` (1, C, h, w) from a generator seeded with (seed, index, timestep)."""
    gen = torch.Generator().manual_seed(seed * 100003 + index * 1009 + timestep)
    return torch.randn(shape, generator=gen)


def schedule_alphas(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t (num_train_timesteps,) float32 of the DDPM schedule described by ``scheduler_config``."""
    cfg = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys of other scheduler classes
        return DDPMScheduler.from_config(cfg).alphas_cumprod.float()
