"""A VAE from its own file or folder, to replace a model's VAE (``--vae``), offline.

Accepted: a diffusers VAE folder (``config.json`` + weights, or a model folder with ``vae/``), or one
``.safetensors`` file with the VAE's tensors in the diffusers layout (``encoder.down_blocks.0...``, as
madebyollin's sdxl-vae-fp16-fix ships it) or the original layout (``encoder.down.0.block.0...``, with or
without the ``first_stage_model.`` prefix, as A1111 / ComfyUI VAE files are). A single file takes the
architecture of the model's current VAE (every SD 1.x / 2.x / SDXL VAE has the same shape; SDXL's has
another scaling factor, which comes with the model's config). Pickled files (.pt/.ckpt) are refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdlora.errors import AdapterFileError, ModelError
from sdlora.files import tensors as files
from sdlora.models import checkpoint

PREFIX = "first_stage_model."


def _from_folder(path: Path, like: Any) -> Any:
    from diffusers import AutoencoderKL

    folder = path if (path / "config.json").is_file() else path / "vae"
    if not (folder / "config.json").is_file():
        raise ModelError(f"--vae {path}: no config.json there (nor in vae/); give a diffusers VAE folder, a "
                         "model folder with vae/, or a .safetensors VAE file")
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"--vae {path}: the VAE folder cannot be opened ({exc})") from None
    return vae


def _state_from_tensors(tensors: dict[str, torch.Tensor], like: Any, path: Path) -> dict[str, torch.Tensor]:
    want = like.state_dict()
    if all(k in tensors for k in want):
        return {k: tensors[k] for k in want}
    plain = {k.removeprefix(PREFIX): v for k, v in tensors.items()}
    n_up = len(like.config.up_block_types)
    out, missing = {}, []
    for k, ref in want.items():
        original, kind = checkpoint.vae_original_key(k, n_up)
        if original not in plain:
            missing.append(original)
            continue
        try:
            out[k] = checkpoint.from_original(checkpoint.Entry(original, "vae", (k,), kind), plain[original],
                                              [tuple(ref.shape)])[0]
        except ValueError as exc:
            raise ModelError(f"--vae {path}: {exc}; it is not a VAE of this model's shape") from None
    if missing:
        raise ModelError(f"--vae {path}: {len(missing)} of {len(want)} VAE tensors are missing (e.g. "
                         f"{', '.join(missing[:2])}): it is not a Stable Diffusion VAE file")
    return out


def load_vae(path: str | Path, like: Any) -> Any:
    """An AutoencoderKL from ``path`` in ``like``'s dtype and on its device (``like``: the model's VAE,
    whose config a single file takes). Raises ModelError for anything that is not such a VAE."""
    from diffusers import AutoencoderKL

    path = Path(path).expanduser()
    if path.is_dir():
        vae = _from_folder(path, like)
    elif not path.is_file():
        raise ModelError(f"--vae {path}: no such file or folder")
    elif path.suffix.lower() != ".safetensors":
        raise ModelError(f"--vae {path}: only .safetensors VAE files (or diffusers folders) are read; a pickled "
                         "VAE can run code when loaded: convert it to .safetensors first")
    else:
        try:
            tensors = files.read_tensors(path)[0]
        except AdapterFileError as exc:
            raise ModelError(str(exc).replace("adapter", "VAE")) from None
        vae = AutoencoderKL.from_config(like.config)
        vae.load_state_dict(_state_from_tensors(tensors, like, path), strict=True)
    return vae.to(device=like.device, dtype=like.dtype).eval()


def replace_vae(model: Any, path: str | Path) -> Any:
    """Load ``path`` (``load_vae``) and make it ``model``'s VAE; returns it. On error the model is unchanged."""
    vae = load_vae(path, model.pipe.vae)
    model.pipe.register_modules(vae=vae)
    return vae
