"""Samplers by name -> diffusers schedulers built from the model's own scheduler config.

Names are matched loosely: case, ``_``/``-``/spaces, ``dpmpp`` for ``dpm++`` and a ``k_`` prefix do not
matter, so ``euler_a``, ``Euler a`` and ``k_euler_a`` are the same sampler. Each sampler has the label
A1111 writes in its PNG parameters (``Sampler: DPM++ 2M Karras``).
"""
from __future__ import annotations

import re
from typing import Any

from sdlora.errors import ConfigError

_KARRAS = {"use_karras_sigmas": True}
_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
# name -> (A1111 label, diffusers class, extra config)
SAMPLERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "euler": ("Euler", "EulerDiscreteScheduler", {}),
    "euler a": ("Euler a", "EulerAncestralDiscreteScheduler", {}),
    "euler karras": ("Euler Karras", "EulerDiscreteScheduler", _KARRAS),
    "heun": ("Heun", "HeunDiscreteScheduler", {}),
    "lms": ("LMS", "LMSDiscreteScheduler", {}),
    "lms karras": ("LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    "dpm2": ("DPM2", "KDPM2DiscreteScheduler", {}),
    "dpm2 karras": ("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
    "dpm2 a": ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
    "dpm2 a karras": ("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS),
    "dpm++ 2m": ("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP),
    "dpm++ 2m karras": ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPMPP, **_KARRAS}),
    "dpm++ 2m sde": ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE),
    "dpm++ 2m sde karras": ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}),
    "ddim": ("DDIM", "DDIMScheduler", {}),
    "ddpm": ("DDPM", "DDPMScheduler", {}),
    "plms": ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPC", "UniPCMultistepScheduler", {}),
    "deis": ("DEIS", "DEISMultistepScheduler", {}),
}
_ALIASES = {"euler ancestral": "euler a", "pndm": "plms", "dpm++ 2m k": "dpm++ 2m karras",
            "dpmsolver": "dpm++ 2m", "uni pc": "unipc"}


def normalize(name: str) -> str:
    """The table key for a sampler name as a user may type it."""
    n = name.strip().lower().replace("_", " ").replace("-", " ")
    n = re.sub(r"\bdpmpp\b", "dpm++", n)
    n = re.sub(r"^k ", "", n)
    n = re.sub(r"dpm\+\+(?=\w)", "dpm++ ", n)
    n = re.sub(r"\s+", " ", n).strip()
    return _ALIASES.get(n, n)


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def label(name: str) -> str:
    """The A1111 label of a sampler (``Euler a``)."""
    return SAMPLERS[_key(name)][0]


def _key(name: str) -> str:
    key = normalize(name)
    if key not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLERS)}")
    return key


def make_scheduler(name: str, base_config: dict[str, Any], prediction_type: str) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` from the model's original scheduler config
    (betas, timestep spacing) with its prediction type. Raises ConfigError for an unknown name."""
    import diffusers

    _, cls_name, extra = SAMPLERS[_key(name)]
    cls = getattr(diffusers, cls_name)
    cfg = {k: v for k, v in base_config.items() if not k.startswith("_")}
    cfg.update(extra, prediction_type=prediction_type)
    return cls.from_config(cfg)
