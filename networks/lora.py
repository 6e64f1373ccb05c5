"""LoRA / LoCon.

Linear:        lora_down (r, in),  lora_up (out, r);          ΔW = up @ down
Conv k×k:      lora_down (r, in, kh, kw) with the base conv's stride/padding/dilation, lora_up (out, r, 1, 1)
Conv Tucker:   lora_down (r, in, 1, 1), lora_mid (r, r, kh, kw), lora_up (out, r, 1, 1);
               ΔW[o, i] = Σ_a Σ_b up[o, a] · mid[a, b] · down[b, i]
Init: down and mid kaiming-uniform (a=√5), up zeros, so ΔW starts at 0.
The bypass path never builds ΔW: x → down (→ mid) → ·γm → up (γ and the strength m in one multiply of
the rank-sized activations; the dropout path of training keeps up(h)·γ, then ·m).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdlora.networks.base import AdapterModule, Tensor


class LoRAModule(AdapterModule):
    algo = "lora"
    file_suffixes = ("lora_down.weight", "lora_up.weight")

    @classmethod
    def file_input_width(cls, tensors):
        down = tensors.get("lora_down.weight")
        return int(down.shape[1]) if down is not None else None
    tucker_suffix = "lora_mid.weight"

    def __init__(self, base: nn.Module, rank: int = 4, alpha: float | None = None, *, tucker: bool = False, **kw):
        super().__init__(base, rank, alpha, **kw)
        out_dim, in_dim, *k = self.shape
        if self.kind == "linear":
            self.lora_down = nn.Linear(in_dim, rank, bias=False)
            self.lora_up = nn.Linear(rank, out_dim, bias=False)
            self.lora_mid = None
        else:
            ck = self.conv_kwargs
            if tucker and any(s != 1 for s in k):
                self.lora_down = nn.Conv2d(in_dim, rank, 1, bias=False)
                self.lora_mid = nn.Conv2d(rank, rank, tuple(k), bias=False, **ck)
            else:
                self.lora_down = nn.Conv2d(in_dim, rank, tuple(k), bias=False, **ck)
                self.lora_mid = None
            self.lora_up = nn.Conv2d(rank, out_dim, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        if self.lora_mid is not None:
            nn.init.kaiming_uniform_(self.lora_mid.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    @classmethod
    def file_rank(cls, tensors):
        down = tensors.get("lora_down.weight")
        return int(down.shape[0]) if down is not None else int(tensors["lora_up.weight"].shape[1])

    @classmethod
    def options_from_tensors(cls, tensors, shape):
        return tensors["lora_down.weight"].shape[0], {"tucker": "lora_mid.weight" in tensors}

    @property
    def tucker(self) -> bool:
        return self.lora_mid is not None

    def delta(self) -> Tensor:
        up = self.lora_up.weight.flatten(1)  # (out, r)
        down = self.lora_down.weight
        if self.kind == "linear":
            return up @ down
        if self.lora_mid is None:
            return (up @ down.flatten(1)).reshape(self.shape)
        # Tucker: einsum over the two rank axes; mid carries the spatial kernel.
        return torch.einsum("oa,abhw,bi->oihw", up, self.lora_mid.weight, down.flatten(1))

    def delta_forward(self, x: Tensor) -> Tensor:
        if not self._regularised():
            return self._factored(x, self.scale)
        h = self.lora_down(x)
        if self.lora_mid is not None:
            h = self.lora_mid(h)
        if self.dropout:
            h = F.dropout(h, self.dropout)
        scale = self.scale
        if self.rank_dropout:
            keep = (torch.rand(self.rank, device=h.device) > self.rank_dropout).to(h.dtype)
            h = h * (keep if self.kind == "linear" else keep.view(1, -1, 1, 1))
            scale = scale / (1.0 - self.rank_dropout)
        return self.lora_up(h) * scale

    def bypass(self, x: Tensor, out: Tensor) -> Tensor:
        """The lean path of plain LoRA (no DoRA, no bias delta, no dropout at work): out + up(down(x)·γm)."""
        if self.dora_scale is not None or self.diff_b is not None or self._regularised():
            return super().bypass(x, out)
        d = self._factored(self._cast_in(x), self.scale * self.multiplier)
        return out + (d if d.dtype == out.dtype else d.to(out.dtype))

    def _regularised(self) -> bool:
        """True while dropout or rank dropout acts (training mode)."""
        return self.training and bool(self.dropout or self.rank_dropout)

    def _factored(self, x: Tensor, k: float) -> Tensor:
        """k·up(mid(down(x))), with k applied to the rank-sized activations (the fewest elements). Linear
        layers call F.linear directly: no submodule call overhead on the path every adapted layer runs."""
        if self.kind == "linear":
            h = F.linear(x, self.lora_down.weight)
            return F.linear(h if k == 1.0 else h * k, self.lora_up.weight)
        h = self.lora_down(x)
        if self.lora_mid is not None:
            h = self.lora_mid(h)
        return self.lora_up(h if k == 1.0 else h * k)
