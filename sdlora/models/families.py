"""The model families sdlora knows, and the facts about them that files and metadata record.

One home for the family names (user-facing), kohya's ``ss_base_model_version``, modelspec's architecture
(with SD 2.x's 768-v rule), and for reading one value from a UNet config (a model, its config object, or
a plain dict).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                  "sdxl": "stable-diffusion-xl-v1-base"}
SD2_768_V_ARCH = "stable-diffusion-v2-768-v"
# The adaptable components by sdlora's names -> their names in a diffusers pipeline (its folders and
# attributes, and the top-level prefix of diffusers/PEFT adapter keys).
PIPELINE_NAMES: dict[str, str] = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}


def modelspec_architecture(family: str, v_prediction: bool) -> str:
    """modelspec's architecture name: SD 2.x with v-prediction is the 768-v model, else the family's."""
    return SD2_768_V_ARCH if family == "sd2" and v_prediction else MODELSPEC_ARCH[family]


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``key`` of a UNet config, given the model, its config object or a dict (``default`` when absent)."""
    config = getattr(config, "config", config)
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)
