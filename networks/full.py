"""Full (dense) deltas: LyCORIS's `full` algorithm and norm-layer deltas.

FullModule  (Linear / Conv2d): ``diff`` (out, in[, kh, kw]) and optional ``diff_b`` (out,) added to the
            weight and bias: W' = W + m·diff, b' = b + m·diff_b. This is how ``modules_to_save``
            (layers trained in full) are stored, and how LyCORIS `full` files load.
NormModule  (GroupNorm / LayerNorm): ``w_norm`` and optional ``b_norm`` added to the affine weight and bias.
Neither has a rank or an alpha (γ = 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdlora.networks.base import AdapterModule, Tensor


class FullModule(AdapterModule):
    algo = "full"
    file_suffixes = ("diff", "diff_b")

    @classmethod
    def file_input_width(cls, tensors):
        diff = tensors.get("diff")
        return int(diff.shape[1]) if diff is not None and diff.dim() >= 2 else None
    fresh_delta = False  # delta() is the ``diff`` parameter itself

    def __init__(self, base: nn.Module, rank: int = 1, alpha: float | None = None, *, train_bias: bool = True,
                 weight: bool = True, **kw):
        kw.pop("dora", None)
        super().__init__(base, 1, 1.0, train_bias=train_bias, **kw)
        self.register_buffer("alpha", self.alpha, persistent=False)  # no alpha in `full` files
        # weight=False: a bias-only delta (``bias = "all"`` on layers without another adapter)
        self.diff = nn.Parameter(torch.zeros(self.shape)) if weight else None

    @classmethod
    def options_from_tensors(cls, tensors, shape):
        return 1, {"weight": "diff" in tensors}

    def delta(self) -> Tensor:
        if self.diff is None:
            return torch.zeros(self.shape, device=self.base.weight.device)
        return self.diff

    def delta_forward(self, x: Tensor) -> Tensor:
        if self.diff is None:
            return 0
        return super().delta_forward(x)


class NormModule(AdapterModule):
    """A delta on a GroupNorm / LayerNorm's affine parameters (``w_norm``, ``b_norm``)."""

    algo = "norm"
    file_suffixes = ("w_norm",)
    fresh_delta = False  # delta() is the ``w_norm`` parameter itself

    def __init__(self, base: nn.Module, rank: int = 1, alpha: float | None = None, *, train_bias: bool = True, **kw):
        if not isinstance(base, (nn.GroupNorm, nn.LayerNorm)) or base.weight is None:
            raise TypeError(f"norm deltas need an affine GroupNorm or LayerNorm, not {type(base).__name__}")
        super().__init__(base, 1, 1.0, **{k: v for k, v in kw.items() if k != "dora"})
        self.register_buffer("alpha", self.alpha, persistent=False)
        self.w_norm = nn.Parameter(torch.zeros(self.shape))
        self.b_norm = nn.Parameter(torch.zeros(self.shape)) if (train_bias and base.bias is not None) else None
        self.diff_b = None

    @classmethod
    def from_tensors(cls, base, tensors):
        module = cls(base, train_bias="b_norm" in tensors)
        module.load_tensors(tensors)
        return module

    def delta(self) -> Tensor:
        return self.w_norm

    def bypass(self, x: Tensor, out: Tensor) -> Tensor:
        b = self.base
        m = self.multiplier
        w = b.weight + m * self.w_norm.to(b.weight.dtype)
        bias = b.bias
        if self.b_norm is not None:
            bias = bias + m * self.b_norm.to(bias.dtype)
        if isinstance(b, nn.GroupNorm):
            return F.group_norm(x, b.num_groups, w, bias, b.eps)
        return F.layer_norm(x, b.normalized_shape, w, bias, b.eps)
