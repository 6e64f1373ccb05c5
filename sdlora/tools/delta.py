"""What one module of a file changes (``Delta``: γ·ΔW, Δb, norm deltas, DoRA magnitude), computed by the
networks classes on the reference's layer (a meta layer is enough: ΔW needs only the tensors and the
layer's shape)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sdlora.adapters import module_from_file_tensors
from sdlora.errors import AdapterFileError
from sdlora.networks import AdapterModule, file_algorithm
from sdlora.networks.full import FullModule, NormModule
from sdlora.tools.reference import Tensor


@dataclass
class Delta:
    """What one module changes at strength 1, in float32.

    weight: γ·ΔW in the layer's weight shape (out, in[, kh, kw]), None for bias/norm-only modules
    bias:   Δb (out,) of a Linear/Conv2d (``diff_b``), or None
    norm:   {"w_norm": (C,), "b_norm": (C,)} of a GroupNorm/LayerNorm delta, or None
    gamma:  the module's scale γ (alpha/rank; 1 for full, norm and full-rank LoKr)
    dora:   the DoRA magnitude (``dora_scale``) when kept rather than folded
    """

    weight: Tensor | None = None
    bias: Tensor | None = None
    norm: dict[str, Tensor] | None = None
    gamma: float = 1.0
    dora: Tensor | None = None

    def add(self, other: "Delta", w: float = 1.0) -> "Delta":
        """self + w·other (DoRA magnitudes are not additive: the caller folds them first)."""
        def s(a, b):
            if b is None:
                return a
            return b * w if a is None else a + b * w
        norm = None
        if self.norm is not None or other.norm is not None:
            mine, theirs = self.norm or {}, other.norm or {}
            norm = {k: s(mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs)}
        return Delta(s(self.weight, other.weight), s(self.bias, other.bias), norm, self.gamma)


def module_delta(layer: nn.Module, tensors: dict[str, Tensor], *, dora: str = "fold", where: str = "") -> Delta:
    """The Delta of one module's file tensors on ``layer`` (a meta layer is enough unless DoRA is folded).

    ``dora``: "fold" gives DoRA's effective change at strength 1, merged_weight(W) − W (needs W);
    "keep" gives the directional γ·ΔW and carries ``dora_scale`` in ``Delta.dora``.
    """
    module = tool_module(layer, tensors, where)
    if isinstance(module, NormModule):
        norm = {"w_norm": module.w_norm.detach().float()}
        if module.b_norm is not None:
            norm["b_norm"] = module.b_norm.detach().float()
        return Delta(norm=norm)
    with torch.no_grad():
        weight = None if isinstance(module, FullModule) and module.diff is None else module.delta_weight().float()
        bias = None if module.diff_b is None else module.diff_b.detach().float()
        mag = module.dora_scale
        if mag is None or dora == "keep":
            return Delta(weight, bias, gamma=float(module.scale), dora=None if mag is None else mag.detach())
        if layer.weight.device.type == "meta":
            raise AdapterFileError(f"{where}: a DoRA module's change depends on the base weights; pass --model "
                                   "with the base model the adapter was made for")
        base = layer.weight.detach().float()
        return Delta(module.merged_weight(base, 1.0) - base, bias, gamma=float(module.scale))


def dora_shape(mag: Tensor, weight: Tensor) -> tuple[int, ...]:
    """PEFT's lora_magnitude_vector is (out,): the row-norm form is (out, 1[, 1, 1])."""
    if mag.dim() == 1:
        return (mag.shape[0], *[1] * (weight.dim() - 1))
    return tuple(mag.shape)


def tool_module(layer: nn.Module, tensors: dict[str, Tensor], where: str = "") -> AdapterModule:
    """An adapter module on ``layer`` (a meta layer is fine) holding ``tensors``, DoRA magnitude included."""
    tensors = {k: v for k, v in tensors.items() if k not in ("scale", "on_input")}
    mag = tensors.pop(AdapterModule.dora_suffix, None)
    try:
        module = module_from_file_tensors(layer, tensors)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        hint = ("; the file does not fit the shipped model config: pass --model with the base model it was made "
                "for" if layer.weight.device.type == "meta" else "; the file was made for another model")
        raise AdapterFileError(f"{where}: {exc}{hint}") from None
    if mag is not None:
        module.dora_scale = nn.Parameter(mag.detach().float().reshape(dora_shape(mag, layer.weight)), requires_grad=False)
    return module


def algo_of(tensors: dict[str, Tensor]) -> str:
    """"lora", "loha", "lokr", "full", "norm", with "+dora" and "+tucker" marks."""
    cls = file_algorithm(tensors)
    algo = cls.algo if cls is not None else "?"
    if cls is not None and cls.tucker_suffix is not None and cls.tucker_suffix in tensors:
        algo += "+tucker"
    return algo + ("+dora" if AdapterModule.dora_suffix in tensors else "")

