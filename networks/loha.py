"""LoHa: the Hadamard product of two low-rank matrices.

Plain:   hada_w1_a, hada_w2_a (out, r); hada_w1_b, hada_w2_b (r, in·kh·kw)
         ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b), reshaped to W's shape.
Tucker (conv k>1): hada_w*_a (r, out), hada_w*_b (r, in), hada_t* (r, r, kh, kw)
         factor_j[o, i] = Σ_a Σ_b t_j[a, b] · w_j_a[a, o] · w_j_b[b, i];  ΔW = factor_1 ⊙ factor_2
Init: w1_b, w2_b ~ N(0, 1); w1_a ~ N(0, 0.1); t ~ N(0, 0.1); w2_a = 0 (ΔW starts at 0).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sdlora.networks.base import AdapterModule, Tensor


def rebuild_tucker(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """t (r, r, kh, kw), wa (r, out), wb (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("abhw,ao,bi->oihw", t, wa, wb)


class LoHaModule(AdapterModule):
    algo = "loha"
    file_suffixes = ("hada_w1_a",)

    @classmethod
    def file_input_width(cls, tensors):
        w1_b = tensors.get("hada_w1_b")  # (rank, in) for a plain LoHa; a Tucker one's cores do not tell it
        return int(w1_b.shape[1]) if w1_b is not None and w1_b.dim() == 2 and "hada_t1" not in tensors else None
    tucker_suffix = "hada_t1"

    def __init__(self, base: nn.Module, rank: int = 4, alpha: float | None = None, *, tucker: bool = False, **kw):
        super().__init__(base, rank, alpha, **kw)
        out_dim, in_dim, *k = self.shape
        self.tucker = bool(tucker and self.kind == "conv" and any(s != 1 for s in k))
        if self.tucker:
            self.hada_t1 = nn.Parameter(torch.empty(rank, rank, *k))
            self.hada_t2 = nn.Parameter(torch.empty(rank, rank, *k))
            self.hada_w1_a = nn.Parameter(torch.empty(rank, out_dim))
            self.hada_w1_b = nn.Parameter(torch.empty(rank, in_dim))
            self.hada_w2_a = nn.Parameter(torch.empty(rank, out_dim))
            self.hada_w2_b = nn.Parameter(torch.empty(rank, in_dim))
            nn.init.normal_(self.hada_t1, std=0.1)
            nn.init.normal_(self.hada_t2, std=0.1)
        else:
            flat_in = in_dim * (k[0] * k[1] if k else 1)
            self.hada_w1_a = nn.Parameter(torch.empty(out_dim, rank))
            self.hada_w1_b = nn.Parameter(torch.empty(rank, flat_in))
            self.hada_w2_a = nn.Parameter(torch.empty(out_dim, rank))
            self.hada_w2_b = nn.Parameter(torch.empty(rank, flat_in))
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.normal_(self.hada_w2_b, std=1.0)
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.zeros_(self.hada_w2_a)

    @classmethod
    def file_rank(cls, tensors):
        return int(tensors["hada_w1_b"].shape[0])

    @classmethod
    def options_from_tensors(cls, tensors, shape):
        return cls.file_rank(tensors), {"tucker": "hada_t1" in tensors}

    def delta(self) -> Tensor:
        if self.tucker:
            f1 = rebuild_tucker(self.hada_t1, self.hada_w1_a, self.hada_w1_b)
            f2 = rebuild_tucker(self.hada_t2, self.hada_w2_a, self.hada_w2_b)
            return f1 * f2
        return ((self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)).reshape(self.shape)
