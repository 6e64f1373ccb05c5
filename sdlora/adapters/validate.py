"""Checks on each tensor of an adapter file before anything is built from it, so that a crafted or broken file
is a sentence naming the file, the key and the problem (never an IndexError or a division by zero later):

- ``alpha`` (and ``scale``) is one number: a 2-element alpha is refused;
- every other tensor has at least one dimension (a 0-d ``lora_down`` is refused) and no dimension of size 0
  (a rank-0 LoRA, a LoKr factor of 0);
- 8-bit float tensors (``float8_e4m3fn`` / ``float8_e5m2``, which ComfyUI and other tools can write) are
  upcast to float32, as A1111 and ComfyUI do when they apply such a file; ``AdapterFile.dtype`` still
  names the stored type.
"""
from __future__ import annotations

import torch

from sdlora.errors import AdapterFileError

SCALARS = ("alpha", "scale")  # suffixes that hold one number
FLAGS = ("on_input",)  # suffixes that are markers, not weights


def checked_tensor(path: str, key: str, suffix: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` (the file's tensor ``key``, canonical ``suffix``) after the checks above, upcast when 8-bit.
    Raises AdapterFileError naming ``path`` and ``key``."""
    shape = tuple(value.shape)
    if suffix in SCALARS:
        if value.numel() != 1:
            raise AdapterFileError(f"{path}: {key} holds {value.numel()} values (shape {list(shape)}); an "
                                   f"{suffix} is one number. The file is broken or crafted; re-save it with "
                                   "the tool that made it")
    elif suffix not in FLAGS:
        if value.dim() == 0:
            raise AdapterFileError(f"{path}: {key} is a single number (a 0-d tensor); adapter weights are "
                                   "matrices or conv kernels. The file is broken or crafted")
        if 0 in shape:
            raise AdapterFileError(f"{path}: {key} has the shape {list(shape)}, with a dimension of size 0 (a "
                                   "rank or factor of 0 holds no change); the file is broken or crafted")
    if value.is_floating_point() and value.element_size() == 1:
        return value.float()
    return value
