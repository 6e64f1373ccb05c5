"""The one fold path: a module's change written into the weight (and bias) of its layer.

``fold_weight`` / ``fold_bias`` compute W' = W + Σ m·γ·ΔW (DoRA and norm modules through their own
W'(W)) in float32 and cast back; ``AdapterStack.fuse``, ``sdlora.tools.bake`` and ``AdapterModule.merge``
all go through them, so a fused model, a baked checkpoint and a merged module hold the same weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: base.py folds through this module
    from sdlora.networks.base import AdapterModule

Tensor = torch.Tensor


def bias_delta(module: AdapterModule) -> Tensor | None:
    """The module's bias delta at strength 1 (``diff_b`` or a norm's ``b_norm``), or None."""
    d = getattr(module, "diff_b", None)
    return d if d is not None else getattr(module, "b_norm", None)


def is_additive(module: AdapterModule) -> bool:
    """True when the module's change does not depend on the weight it is added to (not DoRA, not a norm)."""
    return module.dora_scale is None and module.algo != "norm"


def contribution(module: AdapterModule, weight: Tensor) -> Tensor:
    """The module's change of the float32 ``weight`` at its multiplier: m·γ·ΔW, or W'(W) − W for DoRA.
    A new tensor."""
    if getattr(module, "diff", True) is None:  # a bias-only full delta
        return torch.zeros_like(weight)
    if is_additive(module):
        d = module.delta_weight().float().to(weight.device)  # a new tensor: scaled in place
        return d if module.multiplier == 1.0 else d.mul_(module.multiplier)
    return module.merged_weight(weight) - weight


def fold_weight(weight: Tensor, modules: Sequence[AdapterModule]) -> Tensor:
    """W' = W + Σ contribution(module, W), computed in float32 and cast back to ``weight``'s dtype.
    ``weight``: (out, in) or (out, in, kh, kw) (or a norm's (C,)); it is never changed."""
    w = weight.float()
    # When ``weight`` is not float32, ``w`` is a copy of our own, and it can take the sum itself as long as no
    # module reads W (DoRA, norms): one weight-sized allocation fewer, the same values.
    out = w if w is not weight and all(is_additive(m) for m in modules) else w.clone()
    for m in modules:
        out += contribution(m, w)
    return out.to(weight.dtype)


def fold_bias(bias: Tensor, modules: Sequence[AdapterModule]) -> Tensor:
    """b' = b + Σ m·Δb over the modules that carry a bias delta (in float32, cast back). ``bias``: (out,)."""
    b = bias.float()
    for m in modules:
        d = bias_delta(m)
        if d is not None:
            b = b + m.multiplier * d.float().to(b.device)
    return b.to(bias.dtype)
