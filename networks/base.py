"""The one base-layer abstraction every adapter algorithm builds on.

An adapter wraps a frozen base layer (``nn.Linear`` or ``nn.Conv2d``) with weight W and adds a learned
ΔW. Each algorithm only says what ΔW is (``delta_weight``) and, where it is cheaper, how to apply it to
an input without building it (``delta_forward``). Everything else is written once here:

- scale γ = alpha / rank (the stored ``alpha`` buffer already holds alpha·sqrt(r) for rs-LoRA),
- the user's strength m (``multiplier``), changeable at any time,
- DoRA weight decomposition: W' = (W + γΔW) · (m·(dora_scale / ‖W + γΔW‖_row − 1) + 1),
- training regularisers: dropout, rank_dropout, module_dropout,
- bypass mode (a forward hook adds the adapter's output; W is never touched) and merged mode (ΔW folded
  into W; ``unmerge`` restores the exact original tensor, bit for bit, from a saved copy).

The base layer keeps its place and its name in the model (no wrapper replaces it), so the model's own
state_dict is unchanged and several adapters can hook the same layer.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdlora.networks.fold import bias_delta, fold_bias, fold_weight

Tensor = torch.Tensor


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (no call when it already is)."""
    return t if t.dtype == dtype else t.to(dtype)


def layer_kind(base: nn.Module) -> str:
    """"linear" or "conv" for the layers adapters support; raises TypeError otherwise."""
    if isinstance(base, nn.Linear):
        return "linear"
    if isinstance(base, nn.Conv2d):
        if base.groups != 1:
            raise TypeError("grouped convolutions are not supported by adapters")
        return "conv"
    raise TypeError(f"adapters wrap nn.Linear or nn.Conv2d, not {type(base).__name__}")


def dora_row_norm(weight: Tensor) -> Tensor:
    """‖W‖ per output row, shape (out, 1[, 1, 1]) — the DoRA magnitude at creation."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.dim() - 1))


def dora_col_norm(weight: Tensor) -> Tensor:
    """‖W‖ per input column, shape (1, in[, 1, 1]) — the older DoRA variant some files hold."""
    w = weight.transpose(0, 1)
    n = w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))
    return n.transpose(0, 1)


class AdapterModule(nn.Module):
    """Base class of every adapter algorithm.

    Subclasses define ``delta(self) -> Tensor``: the unscaled ΔW in the base weight's shape
    ((out, in) or (out, in, kh, kw)), and may override ``delta_forward(x)`` with a factored path.
    Parameters are named exactly as the file suffixes (``lora_down.weight``, ``hada_w1_a``, ...), so
    ``state_dict()`` is a module's slice of a kohya/LyCORIS file.
    """

    algo: ClassVar[str] = ""
    # File facts: the tensor names whose presence identifies the algorithm in a file (after the ones of the
    # algorithms registered before it), and the one that marks its Tucker form.
    file_suffixes: ClassVar[tuple[str, ...]] = ()
    # The DoRA magnitude tensor every algorithm may carry: (out, 1, ...) in kohya/LyCORIS files.
    dora_suffix: ClassVar[str] = "dora_scale"
    tucker_suffix: ClassVar[str | None] = None
    # delta() builds a new tensor (False where it returns a parameter): delta_weight may then scale it in place
    fresh_delta: ClassVar[bool] = True

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        dora: bool = False,
        rs_lora: bool = False,
        dropout: float = 0.0,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        train_bias: bool = False,
    ):
        super().__init__()
        self.kind = layer_kind(base) if not isinstance(base, (nn.GroupNorm, nn.LayerNorm)) else "norm"
        # A list keeps the base layer out of this module's parameters and state_dict.
        self._base = [base]
        self.shape: tuple[int, ...] = tuple(base.weight.shape)
        self.rank = int(rank)
        alpha = float(rank if alpha is None or float(alpha) == 0 else alpha)
        stored = alpha * math.sqrt(self.rank) if rs_lora else alpha
        self.register_buffer("alpha", torch.tensor(stored, dtype=torch.float32))
        self.scale = stored / self.rank
        self.multiplier = 1.0
        self.dropout = float(dropout)
        self.rank_dropout = float(rank_dropout)
        self.module_dropout = float(module_dropout)
        self.enabled = True
        self.merged = False
        self._dtype: torch.dtype | None = None  # cache of _param_dtype(); cleared by _apply (.to(), .half(), ...)
        self._backup: dict[str, Tensor] = {}
        self._handle = None
        if dora:
            self.dora_scale = nn.Parameter(dora_row_norm(base.weight.detach().float()))
        else:
            self.dora_scale = None
        if train_bias and getattr(base, "bias", None) is not None:
            self.diff_b = nn.Parameter(torch.zeros(self.shape[0]))
        else:
            self.diff_b = None

    # ----------------------------------------------------------------- geometry
    @property
    def base(self) -> nn.Module:
        return self._base[0]

    @property
    def conv_kwargs(self) -> dict:
        b = self.base
        return dict(stride=b.stride, padding=b.padding, dilation=b.dilation) if self.kind == "conv" else {}

    def _apply_weight(self, x: Tensor, w: Tensor) -> Tensor:
        """x through a layer of the base's geometry with weight ``w`` and no bias."""
        if self.kind == "linear":
            return F.linear(x, w)
        return F.conv2d(x, w, None, **self.conv_kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.scale = self._scale_for(float(self.alpha))
        self._dtype = None

    def _apply(self, fn, recurse=True):
        self._dtype = None  # .to() / .half() / .cuda() on this module or any parent may change the dtype
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------ from a file
    @classmethod
    def from_tensors(cls, base: nn.Module, tensors: dict[str, Tensor]) -> "AdapterModule":
        """An adapter on ``base`` holding ``tensors`` (file suffix -> tensor, e.g. ``lora_up.weight``).

        Rank, Tucker form and other options are read from the tensors' shapes; ``alpha`` missing or 0
        means alpha = rank. Raises ValueError naming the tensor when a shape does not fit ``base``.
        """
        rank, options = cls.options_from_tensors(tensors, tuple(base.weight.shape))
        module = cls(base, rank, None, dora="dora_scale" in tensors, train_bias="diff_b" in tensors, **options)
        module.load_tensors(tensors)
        return module

    @classmethod
    def holds(cls, tensors: dict[str, Tensor]) -> bool:
        """True when a file module's ``tensors`` (suffix -> tensor) are of this algorithm."""
        return any(s in tensors for s in cls.file_suffixes)

    @classmethod
    def file_rank(cls, tensors: dict[str, Tensor]) -> int | None:
        """The rank a file module's ``tensors`` hold, or None where the algorithm has none (full, norm)."""
        return None

    @classmethod
    def file_input_width(cls, tensors: dict[str, Tensor]) -> int | None:
        """The input width of the layer a file module's ``tensors`` were made for (None when they do not
        tell it)."""
        return None

    @classmethod
    def options_from_tensors(cls, tensors: dict[str, Tensor], shape: tuple[int, ...]) -> tuple[int, dict]:
        """(rank, constructor options) for a module holding ``tensors`` on a weight of ``shape``."""
        return 1, {}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Copy file tensors into this module's parameters (shapes checked; alpha sets γ)."""
        own = dict(self.named_parameters())
        for name, value in tensors.items():
            if name == "alpha":
                continue
            if name == "dora_scale" and self.dora_scale is not None and (
                    value.shape != self.dora_scale.shape or self.dora_scale.is_meta):
                # the column-norm variant of old files, or a base layer on the meta device (no norms to take)
                self.dora_scale = nn.Parameter(value.detach().float().clone())
                self._dtype = None
                continue
            if name not in own:
                raise ValueError(f"unexpected tensor {name!r} for a {self.algo} module")
            if tuple(own[name].shape) != tuple(value.shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)} "
                                 f"for a layer of weight shape {self.shape}")
            own[name].copy_(value.to(own[name].dtype))
        alpha = tensors.get("alpha")
        alpha = float(alpha) if alpha is not None and float(alpha) != 0 else float(self.rank)
        self.alpha.fill_(alpha)
        self.scale = self._scale_for(alpha)

    def _scale_for(self, alpha: float) -> float:
        return alpha / self.rank

    # --------------------------------------------------------------------- math
    def delta(self) -> Tensor:
        """Unscaled ΔW in the base weight's shape."""
        raise NotImplementedError(f"{type(self).__name__} must define delta()")

    def delta_weight(self) -> Tensor:
        """γ·ΔW: the change of W at strength 1 (without DoRA), in the base weight's shape. Always a new tensor
        (callers may change it in place); without autograd, a fresh ΔW is scaled in place (same values, one
        weight-sized allocation fewer: baking and fusing are dominated by those)."""
        d = self.delta()
        if self.fresh_delta and not torch.is_grad_enabled():
            return d.mul_(self.scale)
        return d * self.scale

    def delta_forward(self, x: Tensor) -> Tensor:
        """γ·ΔW applied to x (no bias); algorithms with a factored path override this."""
        out = self._apply_weight(x, self._rank_dropped(self.delta_weight()).to(x.dtype))
        return F.dropout(out, self.dropout) if self.training and self.dropout else out

    def _rank_dropped(self, w: Tensor) -> Tensor:
        """Training-only rank dropout over ΔW's output rows, rescaled by 1/(1-p)."""
        if not (self.training and self.rank_dropout):
            return w
        keep = (torch.rand(w.shape[0], device=w.device) > self.rank_dropout).to(w.dtype)
        return w * keep.view(-1, *[1] * (w.dim() - 1)) / (1.0 - self.rank_dropout)

    def merged_weight(self, weight: Tensor, multiplier: float | None = None) -> Tensor:
        """W' for base weight ``weight`` at strength ``multiplier`` (default: the current one)."""
        m = self.multiplier if multiplier is None else multiplier
        dw = self.delta_weight().to(weight.dtype)
        if self.dora_scale is None:
            return weight + m * dw
        w = weight + dw
        return w * self._dora_factor(w, m)

    def _dora_factor(self, w: Tensor, m: float) -> Tensor:
        """m·(dora_scale/‖w‖ − 1) + 1 along the axis dora_scale was taken (rows, or columns in old files)."""
        mag = self.dora_scale.to(w.dtype)
        if mag.shape[0] == w.shape[0] and (mag.dim() < 2 or mag.shape[1] == 1):
            norm = dora_row_norm(w)
        else:
            norm = dora_col_norm(w)
        factor = mag / (norm + torch.finfo(w.dtype).eps)
        return m * (factor - 1) + 1

    # ------------------------------------------------------------ bypass (hook)
    def _hook(self, module: nn.Module, args: tuple, out: Tensor):
        if self.merged or not self.enabled:
            return None
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return None
        return self.bypass(args[0], out)

    def bypass(self, x: Tensor, out: Tensor) -> Tensor:
        """The adapted layer's output given its input ``x`` and the base output ``out``."""
        m = self.multiplier
        if self.dora_scale is None:
            d = self.delta_forward(self._cast_in(x))
            if isinstance(d, Tensor):
                y = out + _as(d if m == 1.0 else m * d, out.dtype)
            else:
                y = out
        else:
            w = self.base.weight.to(self._param_dtype())
            f = self._dora_factor(w + self.delta_weight(), m)
            if f.shape[0] != w.shape[0]:  # column-norm DoRA: no per-output factor; use W' directly
                return self._apply_weight(x, self.merged_weight(w, m).to(x.dtype)) + self._bias(out)
            b = self._bias(out)
            y = (out - b) + _as(self.delta_forward(self._cast_in(x)), out.dtype)
            y = y * self._channel(f.reshape(-1).to(out.dtype), out) + b
        if self.diff_b is not None:
            y = y + m * self._channel(self.diff_b.to(out.dtype), out)
        return y

    def _bias(self, out: Tensor) -> Tensor | int:
        b = getattr(self.base, "bias", None)
        return 0 if b is None else self._channel(b.to(out.dtype), out)

    def _channel(self, v: Tensor, out: Tensor) -> Tensor:
        """Broadcast a per-output-channel vector over ``out`` (channels last for Linear, dim 1 for conv)."""
        return v if self.kind == "linear" else v.view(1, -1, 1, 1)

    def _param_dtype(self) -> torch.dtype:
        """The dtype of the module's first parameter (float32 without any), cached: ``_apply`` (``.to()``,
        ``.half()``, ... on this module or a parent) and loading clear the cache."""
        if self._dtype is None:
            self._dtype = next((p.dtype for p in self.parameters()), torch.float32)
        return self._dtype

    def _cast_in(self, x: Tensor) -> Tensor:
        """``x`` in the parameters' dtype (no call when it already is)."""
        dtype = self._param_dtype()
        return x if x.dtype == dtype else x.to(dtype)

    def attach(self) -> None:
        """Start adding this adapter's output to the base layer's (bypass mode)."""
        if self._handle is None:
            self._handle = self.base.register_forward_hook(self._hook)

    def detach(self) -> None:
        """Stop adapting the base layer; unmerges first so the base weights are restored."""
        if self.merged:
            self.unmerge()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ------------------------------------------------------------------ merged
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter at its current strength into the base weight (and bias), through ``fold``."""
        if self.merged:
            return
        b = self.base
        self._backup = {"weight": b.weight.detach().clone()}
        if bias_delta(self) is not None:
            self._backup["bias"] = b.bias.detach().clone()
            b.bias.copy_(fold_bias(b.bias.detach(), [self]))
        b.weight.copy_(fold_weight(b.weight.detach(), [self]))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly as it was before ``merge`` (bit for bit)."""
        if not self.merged:
            return
        for name, saved in self._backup.items():
            getattr(self.base, name).copy_(saved)
        self._backup = {}
        self.merged = False

    def extra_repr(self) -> str:
        return f"{self.kind} {self.shape}, rank={self.rank}, alpha={float(self.alpha):g}, dora={self.dora_scale is not None}"
