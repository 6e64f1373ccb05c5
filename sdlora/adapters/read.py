"""Reading adapter files: ``AdapterFile.read`` groups a file's tensors per module (``keys.split_key``
understands every dialect) and says what it holds (algorithms, ranks, alphas, family)."""
from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlora import keys
from sdlora.adapters.validate import checked_tensor
from sdlora.files import tensors as files
from sdlora.errors import AdapterFileError
from sdlora.networks import ALGORITHMS, file_algorithm

_CROSS_ATTN_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_DIM = {1024: "sd2", 1280: "sdxl"}


def module_algo(tensors: dict[str, torch.Tensor]) -> str | None:
    """The algorithm of one module's tensors (suffix -> tensor), or None (``networks.file_algorithm``)."""
    cls = file_algorithm(tensors)
    return None if cls is None else cls.algo


def module_rank(tensors: dict[str, torch.Tensor]) -> int | None:
    """The rank one module's tensors hold (the algorithm's own rule), or None (full, norm, full-matrix LoKr)."""
    cls = file_algorithm(tensors)
    return None if cls is None else cls.file_rank(tensors)


@dataclass
class AdapterFile:
    """A file's tensors grouped per module name as written in the file, with what can be told of them."""

    path: str
    metadata: dict[str, str]
    modules: dict[str, dict[str, torch.Tensor]]  # module name -> {canonical suffix: tensor}
    unknown_keys: list[str]  # keys with no known suffix
    dtype: str

    @classmethod
    def read(cls, path: str | Path, *, allow_pickle: bool = False) -> "AdapterFile":
        tensors, metadata = files.read_tensors(path, allow_pickle=allow_pickle)
        if not tensors:
            raise AdapterFileError(f"{path}: the file holds no tensors; it is not an adapter")
        return cls.from_tensors(tensors, metadata, str(path))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     path: str = "<memory>") -> "AdapterFile":
        modules: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
        unknown: list[str] = []
        for key, value in tensors.items():
            name, suffix = keys.split_key(key)
            if not suffix:
                unknown.append(key)
                continue
            value = checked_tensor(path, key, suffix, value)
            if suffix == keys.DORA_SCALE and keys.is_peft_magnitude(key):
                value = value.reshape(-1)  # PEFT's magnitude is per output: (out,) Linear, (1, out, 1, 1) conv
            modules[name][suffix] = value
        # Files holding only an alpha for a module (no weights) are leftovers of other tools: unknown.
        for name in [n for n, t in modules.items() if module_algo(t) is None]:
            unknown.extend(f"{name}.{s}" for s in modules.pop(name))
        _peft_alphas(modules, metadata or {})
        dtypes = collections.Counter(str(t.dtype).replace("torch.", "") for t in tensors.values() if t.is_floating_point())
        return cls(path, dict(metadata or {}), dict(modules), sorted(unknown), ",".join(sorted(dtypes)) or "none")

    # ---- what it holds
    def algorithms(self) -> collections.Counter:
        c = collections.Counter()
        for t in self.modules.values():
            algo = module_algo(t)
            c[algo + ("+dora" if keys.DORA_SCALE in t else "")] += 1
        return c

    def ranks(self) -> list[int]:
        return [r for r in (module_rank(t) for t in self.modules.values()) if r is not None]

    def alphas(self) -> list[float]:
        out = []
        for t in self.modules.values():
            if module_algo(t) in ("lora", "loha", "lokr"):
                a = t.get("alpha")
                out.append(float(a) if a is not None and float(a) != 0 else float(module_rank(t) or 0))
        return out

    def component_of(self, name: str) -> str:
        return keys.component_of_name(name)

    def component_counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.component_of(n) for n in self.modules))

    def detect_family(self) -> str | None:
        """"sd1", "sd2", "sdxl" from names and shapes (cross-attention and text widths), else from metadata."""
        names = list(self.modules)
        if any(keys.component_of_name(n) == "te2" for n in names):
            return "sdxl"
        for name, t in self.modules.items():
            if "attn2" in name and ("to_k" in name or "to_v" in name):
                width = _input_width(t)
                if width in _CROSS_ATTN_DIM:
                    return _CROSS_ATTN_DIM[width]
        for name, t in self.modules.items():
            if self.component_of(name) == "te1" and ("q_proj" in name or "fc1" in name):
                width = _input_width(t)
                if width in _TE_DIM:
                    return _TE_DIM[width]
                if width == 768:
                    return "sd1"
        version = self.metadata.get("ss_base_model_version", "")
        if version.startswith("sdxl"):
            return "sdxl"
        if version.startswith("sd_v2") or self.metadata.get("ss_v2") == "True":
            return "sd2"
        if version.startswith("sd_v1"):
            return "sd1"
        return None


def _peft_alphas(modules: dict[str, dict[str, torch.Tensor]], metadata: dict[str, str]) -> None:
    """Give PEFT-named LoRA modules without an ``alpha`` tensor the alpha of diffusers' ``lora_adapter_metadata``
    (PEFT's LoraConfig per component, keys ``<prefix>.lora_alpha`` / ``.alpha_pattern`` / ``.use_rslora``), as
    diffusers does when it loads the file; without it alpha = rank."""
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return
    if not isinstance(packed, dict):
        return
    for name, t in modules.items():
        prefix, _, path = name.partition(".")
        if "alpha" in t or module_algo(t) != "lora" or packed.get(f"{prefix}.lora_alpha") is None:
            continue
        rank = module_rank(t)
        alpha = float(packed[f"{prefix}.lora_alpha"])
        candidates = {path, path.removeprefix("text_model."), f"text_model.{path}"}
        for pattern, value in (packed.get(f"{prefix}.alpha_pattern") or {}).items():
            if any(re.match(rf"(.*\.)?({pattern})$", c) for c in candidates):
                alpha = float(value)
                break
        if packed.get(f"{prefix}.use_rslora"):
            alpha *= math.sqrt(rank)  # γ = alpha/sqrt(r), stored so that alpha/r gives it
        t["alpha"] = torch.tensor(alpha)


def _input_width(t: dict[str, torch.Tensor]) -> int | None:
    """The input width of the layer a module's tensors were made for (None when it cannot be told)."""
    for cls in ALGORITHMS.values():
        width = cls.file_input_width(t)
        if width is not None:
            return width
    return None

