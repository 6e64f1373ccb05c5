"""Offline diffusers-layout config folders shipped inside the package (config JSON only: no weights, no
tokenizer files). A folder can be passed as `config=` to diffusers' `from_single_file`, or its parts read
with `from_config` to build a model skeleton without touching the network."""
from __future__ import annotations

import pathlib

from .errors import ModelError

ASSETS = pathlib.Path(__file__).parent / "assets" / "configs"

# name -> what it is; the folder under sdlora/assets/configs/ has the same name.
KNOWN: dict[str, str] = {
    "sd15": "Stable Diffusion 1.5 (CLIP-L, epsilon, 512 px)",
    "sd21": "Stable Diffusion 2.1 768-v (OpenCLIP-H, v-prediction, 768 px)",
    "sd2-base": "Stable Diffusion 2.x base (OpenCLIP-H, epsilon, 512 px)",
    "sdxl": "Stable Diffusion XL base 1.0 (CLIP-L + OpenCLIP-bigG, epsilon, 1024 px)",
}


def config_names() -> list[str]:
    """The names `config_dir` accepts."""
    return list(KNOWN)


def config_dir(name: str) -> pathlib.Path:
    """The shipped config folder for `name` (one of `config_names()`), laid out like a diffusers
    repository: model_index.json, unet/, vae/, text_encoder/ (and text_encoder_2/ for sdxl), scheduler/."""
    if name not in KNOWN:
        known = ", ".join(f"{k} ({v})" for k, v in KNOWN.items())
        raise ModelError(f"There is no shipped config named {name!r}. Pick one of: {known}.")
    path = ASSETS / name
    if not (path / "model_index.json").is_file():
        raise ModelError(
            f"The shipped config folder {path} is missing or incomplete; reinstall sdlora "
            "(`pip install --force-reinstall sdlora`)."
        )
    return path
