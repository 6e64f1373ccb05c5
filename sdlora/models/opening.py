"""``open_model``: open a diffusers folder or a single original-layout ``.safetensors`` file offline
(see ``sdlora.models``), and assemble the pipeline from its components."""
from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sdlora.errors import ModelError
from sdlora.memory import keep_freed_memory
from sdlora.files.tensors import parse_dtype
from sdlora.models import tokenizers
from sdlora.models.base import BaseModel, check_family, check_prediction, detect_family, from_pipeline
from sdlora.models.single_file import _open_single_file


def open_model(path: str | Path, *, family: str | None = None, prediction_type: str | None = None,
               dtype: torch.dtype | str | None = None, tokenizer: str | Path | None = None,
               config: str | Path | None = None) -> BaseModel:
    """Open a diffusers folder or a single original-layout ``.safetensors`` file, offline.

    ``family`` / ``prediction_type`` override detection; ``dtype`` casts the weights (default: as stored);
    ``tokenizer`` names a tokenizer folder or diffusers folder; ``config`` (single files) names a shipped
    config (sd15, sd21, sd2-base, sdxl) or a diffusers-layout config folder."""
    keep_freed_memory()  # a model's forwards and steps reuse freed host memory (sdlora.memory)
    path = Path(path).expanduser()
    check_family(family)
    prediction_type = check_prediction(prediction_type)
    dtype = parse_dtype(dtype)
    if path.is_dir():
        return _open_folder(path, family, prediction_type, dtype, tokenizer)
    if not path.is_file():
        raise ModelError(f"{path}: no such file or folder; give a diffusers model folder or a .safetensors file")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(f"{path}: pickle checkpoints can run code when loaded and are not opened; convert it "
                         "to .safetensors first")
    return _open_single_file(path, family, prediction_type, dtype, tokenizer, config)


def _dtype_argument() -> str:
    """The name of from_pretrained's dtype argument in the installed diffusers: ``dtype`` where it replaced
    ``torch_dtype`` (which then warns that it is deprecated), ``torch_dtype`` in older releases."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _open_folder(path: Path, family: str | None, prediction_type: str | None, dtype: torch.dtype | None,
                 tokenizer: str | Path | None) -> BaseModel:
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json); give a folder saved "
                         "by diffusers or sdlora, or a single .safetensors checkpoint")
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    fam = family or ("sdxl" if "text_encoder_2" in index else None)
    kwargs: dict[str, Any] = dict(local_files_only=True)
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs[_dtype_argument()] = dtype
    has_tokenizer = (path / "tokenizer").is_dir()
    if tokenizer is not None or not has_tokenizer:
        if fam is None:
            unet_cfg = json.loads((path / "unet" / "config.json").read_text())
            fam = detect_family(unet_cfg)
        vocab = [json.loads((path / n / "config.json").read_text()).get("vocab_size", 0)
                 for n in ("text_encoder", "text_encoder_2") if (path / n / "config.json").is_file()]
        toks = tokenizers.find_tokenizers(fam, tokenizer, what=str(path), vocab_sizes=vocab)
        kwargs["tokenizer"] = toks[0]
        if "tokenizer_2" in index:
            kwargs["tokenizer_2"] = toks[-1]
    try:
        with _quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: the diffusers folder cannot be opened offline ({exc}); check that every "
                         "component folder holds its config and weights") from None
    return from_pipeline(pipe, family, prediction_type, source=str(path))


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No diffusers / transformers loading progress bars (sdlora shows its own progress)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()
