"""Ranks and SVD factors: LoRA factors of a ΔW at a target rank or energy, and the checks of the rank
options."""
from __future__ import annotations

import math

import torch

from sdlora.errors import ConfigError
from sdlora.tools.reference import Tensor


def check_rank_options(rank: int | None, energy: float | None, conv_rank: int | None = None,
                       *, allow_zero_conv: bool = False) -> None:
    if rank is None and energy is None:
        raise ConfigError("give a target rank (--rank R) or an energy threshold (--energy 0.9)")
    if rank is not None and int(rank) < 1:
        raise ConfigError(f"--rank must be at least 1, got {rank}")
    if conv_rank is not None and int(conv_rank) < (0 if allow_zero_conv else 1):
        least = "0 (0 skips k×k convs)" if allow_zero_conv else "1"
        raise ConfigError(f"--conv-rank must be at least {least}, got {conv_rank}")
    if energy is not None and not (0.0 < float(energy) <= 1.0):
        raise ConfigError(f"--energy must be in (0, 1] (the share of ΔW's squared singular values to keep), "
                          f"got {energy}")


def is_kxk(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def choose_rank(s: Tensor, rank: int | None, energy: float | None) -> int:
    """The rank to keep of singular values ``s`` (descending): ``rank`` capped at full rank, and with
    ``energy`` the smallest r whose cumulative squared singular values reach energy·total (capped by rank)."""
    full = int(s.numel())
    r = full if rank is None else min(int(rank), full)
    if energy is not None:
        e = s.double() ** 2
        total = float(e.sum())
        if total > 0:
            reached = torch.cumsum(e, 0) >= float(energy) * total * (1 - 1e-12)
            r = min(r, int(torch.nonzero(reached)[0]) + 1)
        else:
            r = 1
    return max(1, r)


SVD_DIRECT_MAX = 1 << 18  # layers up to this many elements get a plain float64 SVD
RANGE_TOL = 1e-12  # the range route accepts when ‖ΔW − QQᵀΔW‖² ≤ RANGE_TOL·‖ΔW‖² (1e-6 relative: fp32 noise)


def svd_factors(delta: Tensor, rank: int | None, energy: float | None, gamma: float = 1.0
                ) -> tuple[Tensor, Tensor]:
    """LoRA factors of ``delta`` (out, in[, kh, kw]) with γ·up@down = its best rank-r approximation.

    up (out, r) / down (r, in) for Linear; up (out, r, 1, 1) / down (r, in, kh, kw) for Conv2d. All in
    float64. Small layers: an SVD. Larger ones: first the range route — ΔW's range from ΔW·Ω (Ω random,
    k columns, k grown ×4 while k < min(out, in)/2), accepted when it holds all of ΔW but RANGE_TOL (the sums
    of LoRA-family adapters have low rank: then the SVD of the small QᵀΔW is the SVD of ΔW); else the
    eigenvectors of the smaller Gram matrix (full-rank differences, e.g. extract). Each side carries √σ
    (balanced for fp16), divided by √|γ|.
    """
    out_dim = delta.shape[0]
    flat = delta.reshape(out_dim, -1).double()
    factors = _svd_route(flat, rank, energy) if flat.numel() <= SVD_DIRECT_MAX else None
    if factors is None:
        factors = _range_route(flat, rank, energy) or _gram_route(flat, rank, energy)
    up, down = factors
    root = math.sqrt(abs(gamma))
    up, down = (up * (math.copysign(1.0, gamma) / root)).float(), (down / root).float()
    r = down.shape[0]
    if delta.dim() == 4:
        up = up.reshape(out_dim, r, 1, 1)
        down = down.reshape(r, *delta.shape[1:])
    return up.contiguous(), down.contiguous()


def _svd_route(x: Tensor, rank: int | None, energy: float | None, q: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Balanced rank-r factors from the SVD of x (m, n); with ``q`` (M, m) orthonormal, of q@x."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    r = choose_rank(s, rank, energy)
    up = u[:, :r] if q is None else q @ u[:, :r]
    return up * s[:r].sqrt(), s[:r].sqrt()[:, None] * vh[:r]


def _range_route(x: Tensor, rank: int | None, energy: float | None) -> tuple[Tensor, Tensor] | None:
    """Exact factors of a low-rank x (m, n) through its range, or None when x is not of low rank."""
    full = min(x.shape)
    total = float(x.pow(2).sum())
    if total == 0:
        return None
    gen = torch.Generator().manual_seed(0)
    k = 64
    while k <= full // 2:
        q, _ = torch.linalg.qr(x @ torch.randn(x.shape[1], k, dtype=x.dtype, generator=gen))
        b = q.T @ x  # (k, n): x = q @ b when the range is held
        if total - float(b.pow(2).sum()) <= RANGE_TOL * total:
            return _svd_route(b, rank, energy, q)
        k *= 4
    return None


def _gram_route(x: Tensor, rank: int | None, energy: float | None) -> tuple[Tensor, Tensor]:
    """Rank-r factors of x (m, n) from the eigen-decomposition of its smaller Gram matrix (float64):
    B = the top-r eigenvectors; wide: up = B, down = Bᵀx; tall: up = xB, down = Bᵀ; then balanced."""
    wide = x.shape[0] <= x.shape[1]
    lam, vec = torch.linalg.eigh(x @ x.T if wide else x.T @ x)
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    r = choose_rank(lam.sqrt(), rank, energy)
    basis = vec[:, :r]
    up, down = (basis, basis.T @ x) if wide else (x @ basis, basis.T)
    sigma = down.norm(dim=1) if wide else up.norm(dim=0)  # ≈ the singular values
    s = sigma.sqrt().masked_fill(sigma == 0, 1.0)
    return (up * s, down / s[:, None]) if wide else (up / s, down * s[:, None])

