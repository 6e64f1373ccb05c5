"""Offline diffusers-layout config folders shipped inside the package (config JSON only: no weights, no
tokenizer files). A folder can be passed as `config=` to diffusers' `from_single_file`, or its parts read
with `from_config` to build a model skeleton without touching the network."""
from __future__ import annotations

import pathlib

from sdlora.errors import ModelError

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets" / "configs"
# The embedded default model (a small SD 1.x-layout diffusers folder, see sdlora/toy/).
DEFAULT_MODEL = ASSETS.parent / "default"

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


def default_model_path() -> pathlib.Path:
    """The embedded default model's folder; a clear error when it is not installed."""
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        raise ModelError(f"the embedded default model is missing ({DEFAULT_MODEL}); reinstall sdlora, or make it "
                         "with `python -m sdlora.toy.pretrain --out sdlora/assets/default`")
    return DEFAULT_MODEL
