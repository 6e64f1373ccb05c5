"""The trainer's performance levers, each behind a ``[training]`` key, and the step's one host sync.

- ``loss_stats`` / ``read_step``: a step's losses and its finite check are summed on the device; the host
  reads them once per optimiser step, together with the gradient norm (one ``tolist``), instead of a
  ``float(loss)`` and an ``isfinite`` check per micro-batch (each a device->host sync on a GPU).
- ``training.channels_last``: the UNet's 4-d weights in channels-last memory format (convolutions run
  NHWC); the same maths, summed in another order (a tolerance, not bitwise).
- ``training.compile``: ``torch.compile`` of the UNet's forward with the adapters attached (their forward
  hooks are traced into the graph); ``training.compile_backend`` picks the backend ("inductor": generated
  kernels, needs a C++ compiler on the CPU; "aot_eager": traced but run by eager kernels, for checking).
"""
from __future__ import annotations

import torch

__all__ = ["loss_stats", "read_step", "apply_memory_format", "compile_unet"]


def loss_stats(loss: torch.Tensor) -> torch.Tensor:
    """(2,) float64 on the loss's device: the loss (a 0-d tensor) and 1 if it is not finite, else 0."""
    value = loss.detach().to(torch.float64).reshape(())
    return torch.stack([value, (~torch.isfinite(value)).to(torch.float64)])


def read_step(stats: torch.Tensor, norm: torch.Tensor | float | None = None) -> tuple[float, bool, float | None]:
    """(loss sum, any non-finite, gradient norm) read from the device in one sync. ``stats``: (2,) as summed
    ``loss_stats``; ``norm``: the 0-d gradient norm (None: not computed)."""
    parts = [stats.to(torch.float64).reshape(-1)]
    if isinstance(norm, torch.Tensor):
        parts.append(norm.detach().to(stats.device, torch.float64).reshape(1))
    values = torch.cat(parts).tolist()
    loss, bad = values[0], values[1] > 0
    if norm is None:
        return loss, bad, None
    return loss, bad, (values[2] if isinstance(norm, torch.Tensor) else float(norm))


def apply_memory_format(unet: torch.nn.Module, channels_last: bool) -> None:
    """Put the UNet's 4-d parameters in channels-last memory format (a no-op when ``channels_last`` is off)."""
    if channels_last:
        unet.to(memory_format=torch.channels_last)


def compile_unet(unet: torch.nn.Module, enabled: bool, backend: str = "inductor") -> None:
    """Compile the UNet's forward in place (``nn.Module.compile``): parameters, hooks and state_dict are the
    module's own, so saving, sampling and resuming see the same model. A no-op when ``enabled`` is off."""
    if enabled:
        unet.compile(backend=backend, dynamic=False)
