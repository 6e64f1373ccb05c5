"""Optimisers and learning-rate schedules.

Parameter groups are per component ("unet", "te1", "te2") so each has its own learning rate; the text
encoders' groups drop to 0 after ``training.te_stop_step``. Optimisers: AdamW, Lion (written here: the
sign of an interpolated momentum, Chen et al. 2023), Adafactor (transformers, fixed learning rate),
Prodigy (``prodigyopt``) and AdamW8bit (``bitsandbytes``) when those packages are installed.
Schedules (``LambdaLR``, so their state is plain numbers): constant, linear, cosine and
cosine_with_restarts, each after a linear warmup.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from sdlora.errors import ConfigError
from sdlora.networks import Network
from sdlora.trainers.config import OptimizerSection, TrainingSection


class Lion(torch.optim.Optimizer):
    """Lion: p ← p·(1 − lr·wd) − lr·sign(β₁·m + (1 − β₁)·g);  m ← β₂·m + (1 − β₂)·g."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def learning_rates(t: TrainingSection) -> dict[str, float]:
    te1 = t.learning_rate if t.te1_lr is None else t.te1_lr
    return {"unet": t.learning_rate if t.unet_lr is None else t.unet_lr, "te1": te1,
            "te2": te1 if t.te2_lr is None else t.te2_lr}


def param_groups(network: Network, lrs: dict[str, float]) -> list[dict]:
    """One group per component that has trainable adapter parameters."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for component, _, module in network.items_by_module():
        groups.setdefault(component, []).extend(p for p in module.parameters() if p.requires_grad)
    return [{"params": params, "lr": lrs[c], "name": c} for c, params in groups.items() if params]


def fused_supported(groups: list[dict]) -> bool:
    """True when torch has a fused AdamW kernel for every parameter: a floating dtype on a device that has
    the kernels (``torch.utils._foreach_utils``; CPU since torch 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    devices = set(_get_fused_kernels_supported_devices())
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in devices and p.is_floating_point() for p in params)


def make_optimizer(cfg: OptimizerSection, groups: list[dict]) -> torch.optim.Optimizer:
    betas = tuple(cfg.betas)
    lr = groups[0]["lr"]
    if cfg.name == "adamw":
        fused = cfg.fused and fused_supported(groups)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 **({"fused": True} if fused else {}))
    if cfg.name == "lion":
        return Lion(groups, lr=lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=cfg.weight_decay)
    if cfg.name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ConfigError('optimizer.name = "prodigy" needs the prodigyopt package: pip install prodigyopt, '
                              'or pick adamw, lion or adafactor') from None
        return Prodigy(groups, lr=lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError('optimizer.name = "adamw8bit" needs the bitsandbytes package (and a CUDA GPU): '
                              'pip install bitsandbytes, or pick adamw') from None
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer.name = {cfg.name!r} is not allowed: use adamw, adamw8bit, lion, adafactor or prodigy")


def lr_factor(kind: str, step: int, warmup: int, total: int, cycles: int = 1) -> float:
    """The multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerSection, total_steps: int,
                   te_stop_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    def for_group(group: dict):
        stop = te_stop_step if group.get("name") in ("te1", "te2") and te_stop_step else None

        def factor(step: int) -> float:
            if stop is not None and step >= stop:
                return 0.0
            return lr_factor(cfg.scheduler, step, cfg.warmup_steps, total_steps, cfg.cycles)
        return factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [for_group(g) for g in optimizer.param_groups])
