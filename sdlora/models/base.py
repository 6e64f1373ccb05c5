"""``BaseModel``: a diffusers pipeline with its family ("sd1", "sd2", "sdxl"), prediction type and the
adaptable components by the names the rest of sdlora uses ("unet", "te1", "te2"); ``from_pipeline`` wraps
an existing pipeline."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from sdlora.errors import ModelError
from sdlora.files import tensors as files
from sdlora.models.families import FAMILIES


PREDICTIONS = ("epsilon", "v_prediction")
FORMATS = ("single-file", "diffusers")
SHIPPED = {"sd1": "sd15", "sd2": "sd2-base", "sdxl": "sdxl"}  # sd2 v-prediction: sd21
_TE_CLASSES = {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}


@dataclass
class BaseModel:
    """A diffusers pipeline with what sdlora needs to know about it."""

    pipe: Any  # StableDiffusionPipeline | StableDiffusionXLPipeline
    family: str
    prediction_type: str = "epsilon"
    source: str = ""
    ignored_keys: list[str] = field(default_factory=list)  # keys of a single file that held nothing used
    stack: Any = None  # the AdapterStack on this model, set by AdapterStack(model)
    base_scheduler: dict = field(default_factory=dict, repr=False)  # the model's own scheduler config
    _hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.base_scheduler:
            self.base_scheduler = {k: v for k, v in dict(self.pipe.scheduler.config).items()
                                   if not k.startswith("_")}
            self.base_scheduler["_class_name"] = type(self.pipe.scheduler).__name__

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

    def pipeline_components(self) -> dict[str, nn.Module]:
        """{"unet", "vae", "text_encoder"[, "text_encoder_2"]}: the modules a checkpoint holds."""
        names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if self.family == "sdxl" else [])
        return {n: getattr(self.pipe, n) for n in names}

    @property
    def v_prediction(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def latent_scale(self) -> float:
        return float(getattr(self.pipe.vae.config, "scaling_factor", 0.18215))

    @property
    def name(self) -> str:
        """The model's name as A1111 shows it: the file or folder name without extension."""
        return Path(self.source).stem if self.source else "model"

    @property
    def default_size(self) -> int:
        """The native image side in pixels (UNet sample size × VAE scale factor)."""
        return int(self.unet.config.sample_size) * int(getattr(self.pipe, "vae_scale_factor", 8))

    def model_hash(self) -> str:
        """A1111's short model hash (first 10 hex of the file's sha256) for a single-file model; "" else.
        Computed once."""
        if self._hash is None:
            path = Path(self.source)
            self._hash = files.file_sha256(path)[:10] if path.is_file() else ""
        return self._hash

    def configs(self) -> dict[str, dict]:
        """JSON-able configs of every component, the scheduler and the pipeline: what a single file
        needs besides its weights to be rebuilt exactly."""
        out = {n: _config_dict(m) for n, m in self.pipeline_components().items()}
        out["scheduler"] = json.loads(json.dumps(dict(self.base_scheduler, prediction_type=self.prediction_type),
                                                 default=str))
        if self.family == "sdxl":
            out["pipeline"] = {"force_zeros_for_empty_prompt":
                               bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", True))}
        return out


def _config_dict(module: nn.Module) -> dict:
    cfg = module.config
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    d = {k: v for k, v in d.items() if not k.startswith("_") and k not in ("transformers_version", "dtype",
                                                                           "torch_dtype")}
    return json.loads(json.dumps(d, default=str))


def check_family(family: str | None) -> str | None:
    if family is not None and family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    return family


def check_prediction(prediction_type: str | None) -> str | None:
    if prediction_type in (None, ""):
        return None
    value = {"v": "v_prediction", "eps": "epsilon"}.get(prediction_type, prediction_type)
    if value not in PREDICTIONS:
        raise ModelError(f"unknown prediction type {prediction_type!r}; use epsilon or v_prediction (v)")
    return value


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
    fam = check_family(family) or detect_family(pipe.unet.config, getattr(pipe, "text_encoder_2", None))
    prediction_type = check_prediction(prediction_type)
    pred = prediction_type or getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    if prediction_type:
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    return BaseModel(pipe=pipe, family=fam, prediction_type=pred, source=source)
