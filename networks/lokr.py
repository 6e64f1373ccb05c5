"""LoKr: a Kronecker product of a small and a (possibly low-rank) large matrix.

out = out_l · out_k and in = in_m · in_n (``factorization``).
w1 (out_l, in_m), or w1_a (out_l, r) @ w1_b (r, in_m) when decompose_both and r < max(out_l, in_m)/2.
w2 (out_k, in_n[, kh, kw]) in full when r ≥ max(out_k, in_n)/2 (then γ = 1 whatever alpha), else
w2_a (out_k, r) @ w2_b (r, in_n·kh·kw); Tucker conv: w2_a (r, out_k), w2_b (r, in_n), t2 (r, r, kh, kw).
ΔW = kron(w1, w2) reshaped to W's shape.
Init: w1 (or w1_a, w1_b) kaiming; w2 zeros when full, else w2_a kaiming and w2_b zeros.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from sdlora.networks.base import AdapterModule, Tensor
from sdlora.networks.loha import rebuild_tucker


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dim`` into (m, n), m ≤ n, m·n = dim.

    With ``factor`` > 0 dividing ``dim``: (factor, dim/factor), ordered. Otherwise (``factor`` = -1: no
    cap) start at (1, dim) and take the next divisor pair while m + n does not grow and m ≤ factor.
    320 → (16, 20), 768 → (24, 32), 1280 → (32, 40); 320 with factor 8 → (8, 40).
    """
    if factor > 0 and dim % factor == 0:
        m, n = factor, dim // factor
        return (m, n) if m <= n else (n, m)
    cap = dim if factor < 0 else factor
    m, n = 1, dim
    while m < n:
        nm = m + 1
        while dim % nm:
            nm += 1
        nn_ = dim // nm
        if nm + nn_ > m + n or nm > cap:
            break
        m, n = nm, nn_
    return (m, n) if m <= n else (n, m)


def kaiming(p: Tensor) -> None:
    nn.init.kaiming_uniform_(p, a=math.sqrt(5))


class LoKrModule(AdapterModule):
    algo = "lokr"
    file_suffixes = ("lokr_w1", "lokr_w1_a")
    tucker_suffix = "lokr_t2"

    def __init__(
        self,
        base: nn.Module,
        rank: int = 4,
        alpha: float | None = None,
        *,
        factor: int = -1,
        decompose_both: bool = False,
        full_matrix: bool = False,
        tucker: bool = False,
        layout: dict | None = None,
        **kw,
    ):
        out_dim, in_dim, *k = tuple(base.weight.shape)
        if layout is None:  # choose the split; from_tensors passes the one a file holds instead
            in_m, in_n = factorization(in_dim, factor)
            out_l, out_k = factorization(out_dim, factor)
            use_w2 = full_matrix or rank >= max(out_k, in_n) / 2
            layout = dict(
                out_l=out_l, out_k=out_k, in_m=in_m, in_n=in_n,
                use_w1=not (decompose_both and rank < max(out_l, in_m) / 2 and not full_matrix),
                use_w2=use_w2, tucker=bool(tucker and k and any(s != 1 for s in k) and not use_w2),
            )
        out_l, out_k, in_m, in_n = layout["out_l"], layout["out_k"], layout["in_m"], layout["in_n"]
        if out_l * out_k != out_dim or in_m * in_n != in_dim:
            raise ValueError(f"LoKr factors ({out_l}x{out_k}, {in_m}x{in_n}) do not fit a weight of shape "
                             f"{tuple(base.weight.shape)}")
        super().__init__(base, rank, alpha, **kw)
        self.tucker = layout["tucker"]
        if layout["use_w1"]:
            self.lokr_w1 = nn.Parameter(torch.empty(out_l, in_m))
            kaiming(self.lokr_w1)
        else:
            self.lokr_w1_a = nn.Parameter(torch.empty(out_l, rank))
            self.lokr_w1_b = nn.Parameter(torch.empty(rank, in_m))
            kaiming(self.lokr_w1_a)
            kaiming(self.lokr_w1_b)
        if layout["use_w2"]:
            self.lokr_w2 = nn.Parameter(torch.zeros(out_k, in_n, *k))
        elif self.tucker:
            self.lokr_t2 = nn.Parameter(torch.empty(rank, rank, *k))
            self.lokr_w2_a = nn.Parameter(torch.empty(rank, out_k))
            self.lokr_w2_b = nn.Parameter(torch.zeros(rank, in_n))
            kaiming(self.lokr_t2)
            kaiming(self.lokr_w2_a)
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(out_k, rank))
            self.lokr_w2_b = nn.Parameter(torch.zeros(rank, in_n * math.prod(k)))
            kaiming(self.lokr_w2_a)
        if self.full_rank:
            self.alpha.fill_(float(self.rank))
            self.scale = 1.0

    @property
    def full_rank(self) -> bool:
        """Neither half is low-rank: γ = 1 whatever alpha says."""
        return hasattr(self, "lokr_w1") and hasattr(self, "lokr_w2")

    def _scale_for(self, alpha: float) -> float:
        return 1.0 if self.full_rank else alpha / self.rank

    @classmethod
    def file_rank(cls, tensors):
        """The rank of a decomposed side (w1 first, then w2); None when both sides are full matrices."""
        for k in ("lokr_w1_b", "lokr_w2_b"):
            if k in tensors:
                return int(tensors[k].shape[0])
        return None

    @classmethod
    def options_from_tensors(cls, tensors, shape):
        out_dim, in_dim, *k = shape
        if "lokr_w1" in tensors:
            out_l, in_m = tensors["lokr_w1"].shape[:2]
        else:
            out_l, in_m = tensors["lokr_w1_a"].shape[0], tensors["lokr_w1_b"].shape[1]
        tucker = "lokr_t2" in tensors
        rank = cls.file_rank(tensors) or 1
        layout = dict(out_l=int(out_l), out_k=out_dim // int(out_l), in_m=int(in_m), in_n=in_dim // int(in_m),
                      use_w1="lokr_w1" in tensors, use_w2="lokr_w2" in tensors, tucker=tucker)
        return rank, {"layout": layout}

    def _w1(self) -> Tensor:
        w1 = getattr(self, "lokr_w1", None)
        return w1 if w1 is not None else self.lokr_w1_a @ self.lokr_w1_b

    def _w2(self) -> Tensor:
        w2 = getattr(self, "lokr_w2", None)
        if w2 is not None:
            return w2
        if self.tucker:
            return rebuild_tucker(self.lokr_t2, self.lokr_w2_a, self.lokr_w2_b)
        out_k = self.lokr_w2_a.shape[0]
        w2 = self.lokr_w2_a @ self.lokr_w2_b
        return w2.reshape(out_k, -1, *self.shape[2:]) if len(self.shape) == 4 else w2

    def delta(self) -> Tensor:
        w1, w2 = self._w1(), self._w2()
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2.contiguous()).reshape(self.shape)
