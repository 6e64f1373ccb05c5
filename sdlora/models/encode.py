"""What the UNet is conditioned on: VAE latents of images, text-encoder outputs of captions, and SDXL's
size conditioning.

- ``encode_pixels``: (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/f, W/f), f the VAE's downscale.
  The latent distribution's mean is used (not a sample), so a cached latent equals a fresh one.
- ``encode_text``: captions -> (hidden states (B, 77, D), pooled (B, P) or None). SD1/SD2: the last
  layer (or ``clip_skip`` layers back, then the final layer norm). SDXL: the penultimate hidden states of
  both encoders concatenated, pooled = text_encoder_2's projected embedding — as diffusers' pipelines do.
- ``time_ids``: SDXL's (original size, crop top-left, target size) per sample, shape (B, 6).
"""
from __future__ import annotations

import torch

from sdlora.models import BaseModel


def vae_factor(vae) -> int:
    """How many pixels one latent covers along a side (8 for real SD VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents (float32) of ``pixels`` (B, 3, H, W) in [-1, 1]."""
    param = next(vae.parameters())
    dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    latents = dist.mean
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents - shift
    return (latents * scale).float()


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(model: BaseModel, captions: list[str], clip_skip: int = 1,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled or None) of ``captions``; gradients flow when the encoders are trained."""
    encoders, tokenizers = model.text_encoders, model.tokenizers
    device = device or next(encoders[0].parameters()).device
    if model.family == "sdxl":
        states, pooled = [], None
        for tok, te in zip(tokenizers, encoders):
            out = te(tokenize(tok, captions).to(device), output_hidden_states=True)
            states.append(out.hidden_states[-(clip_skip + 1)])
            pooled = out[0]  # text_embeds of CLIPTextModelWithProjection (the last encoder)
        return torch.cat(states, dim=-1), pooled
    te = encoders[0]
    ids = tokenize(tokenizers[0], captions).to(device)
    if clip_skip == 1:
        return te(ids)[0], None
    out = te(ids, output_hidden_states=True)
    inner = getattr(te, "text_model", te)
    return inner.final_layer_norm(out.hidden_states[-clip_skip]), None


def time_ids(original: list[tuple[int, int]], crop_top_left: list[tuple[int, int]],
             target: tuple[int, int]) -> torch.Tensor:
    """(B, 6) float32: original (h, w), crop (top, left), target (h, w) per sample."""
    rows = [[*o, *c, *target] for o, c in zip(original, crop_top_left)]
    return torch.tensor(rows, dtype=torch.float32)
