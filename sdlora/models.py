"""Base models: open SD 1.x / SD 2.x / SDXL pipelines offline and say what they are.

``open_model(path)`` returns a ``BaseModel``: the diffusers pipeline plus its family ("sd1", "sd2",
"sdxl") and prediction type, and the adaptable components by the names the rest of sdlora uses
("unet", "te1", "te2").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import ModelError

FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class BaseModel:
    """A diffusers pipeline with what sdlora needs to know about it."""

    pipe: Any  # StableDiffusionPipeline | StableDiffusionXLPipeline
    family: str
    prediction_type: str = "epsilon"
    source: str = ""

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet

    @property
    def vae(self) -> nn.Module:
        return self.pipe.vae

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [m for m in (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)) if m is not None]

    @property
    def tokenizers(self) -> list[Any]:
        return [t for t in (self.pipe.tokenizer, getattr(self.pipe, "tokenizer_2", None)) if t is not None]

    def components(self) -> dict[str, nn.Module]:
        """{"unet": ..., "te1": ..., ["te2": ...]}: the modules adapters attach to."""
        out = {"unet": self.pipe.unet}
        encoders = self.text_encoders
        if encoders:
            out["te1"] = encoders[0]
        if len(encoders) > 1:
            out["te2"] = encoders[1]
        return out

    @property
    def v_prediction(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def latent_scale(self) -> float:
        return float(getattr(self.pipe.vae.config, "scaling_factor", 0.18215))


def detect_family(unet_config: Any, text_encoder_2: Any = None) -> str:
    """"sdxl" for a UNet with text_time added conditioning (or a second encoder), "sd2" for a UNet with
    linear projections or 1024-wide cross-attention, else "sd1"."""
    get = (lambda k, d=None: unet_config.get(k, d)) if isinstance(unet_config, dict) else \
        (lambda k, d=None: getattr(unet_config, k, d))
    if get("addition_embed_type") == "text_time" or text_encoder_2 is not None:
        return "sdxl"
    if get("use_linear_projection") or get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def from_pipeline(pipe: Any, family: str | None = None, prediction_type: str | None = None,
                  source: str = "") -> BaseModel:
    """Wrap an already-built diffusers pipeline."""
    fam = family or detect_family(pipe.unet.config, getattr(pipe, "text_encoder_2", None))
    if fam not in FAMILIES:
        raise ModelError(f"unknown model family {fam!r}; use one of {', '.join(FAMILIES)}")
    pred = prediction_type or getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    if prediction_type:
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    return BaseModel(pipe=pipe, family=fam, prediction_type=pred, source=source)


def open_model(path: str | Path, *, family: str | None = None, prediction_type: str | None = None,
               dtype: torch.dtype | None = None) -> BaseModel:
    """Open a diffusers-layout model folder offline."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json)")
    from diffusers import DiffusionPipeline

    kwargs = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    except TypeError:
        kwargs.pop("safety_checker"), kwargs.pop("requires_safety_checker")
        pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    return from_pipeline(pipe, family, prediction_type, source=str(path))
