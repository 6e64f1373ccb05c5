"""Which common tools read an adapter, and how each applies a DoRA file (what ``inspect`` and ``train`` print).

kohya's own LoRA network (sd-scripts ``networks.lora``; A1111 and kohya's merge/resize scripts follow its
``ss_network_module``) holds plain LoRA/LoCon on the UNet's transformer/resnet/sampler blocks and the text
encoders' attention/MLP only. Tucker LoCon (``lora_mid``), LoHa, LoKr, full/norm differences, DoRA, bias
deltas and modules on conv_in / conv_out / the time and label embeddings need the LyCORIS loader, so files
holding any of them are labelled ``ss_network_module = "lycoris.kohya"``.

DoRA at strength s, with W the base weight, W_d = W + ΔW and m the stored magnitude:
  sdlora   W' = W_d · (s·(m/‖W_d‖ − 1) + 1): the magnitude's pull is scaled (LyCORIS's rule); s = 1 is exact DoRA.
  ComfyUI  W' = W + s·(W_d·m/‖W‖ − W) for a row-shaped m (the norm of the original W, not W_d), column norms
           of W_d for a column-shaped m.
  A1111    W' = W + s·(W_d·m/‖W_d‖_col − W): column norms always, so a row-shaped m (sdlora's and LyCORIS's
           default) is broadcast against the wrong axis there.
"""
from __future__ import annotations

import torch

from sdlora import keys
from sdlora.adapters.read import AdapterFile
from sdlora.networks import Network
from sdlora.networks.lora import LoRAModule

LYCORIS_MODULE = "lycoris.kohya"
KOHYA_MODULE = "networks.lora"

DORA_RULES = (
    "DoRA at strength s (W base, W_d = W + ΔW, m the stored magnitude): sdlora W' = W_d·(s·(m/‖W_d‖ − 1) + 1); "
    "ComfyUI W' = W + s·(W_d·m/‖W‖ − W) (row-shaped m: the norm of the original W); A1111 W' = W + "
    "s·(W_d·m/‖W_d‖_col − W) (column norms always: a row-shaped m is applied on the wrong axis). The three "
    "agree only where m fits each rule; compare at strength 1 in the client you use.")


def kohya_cannot_load(network: Network) -> str | None:
    """Why kohya's own LoRA network cannot hold ``network`` (None when it can)."""
    for component, path, module in network.items_by_module():
        if not isinstance(module, LoRAModule):
            return f"it holds {module.algo} modules"
        if module.tucker:
            return "it holds Tucker LoCon modules (a mid factor)"
        if module.dora_scale is not None:
            return "it holds DoRA magnitudes"
        if module.diff_b is not None:
            return "it holds bias deltas (diff_b)"
        if not keys.kohya_network_covers(component, path):
            return f"it adapts {component} {path}, which kohya's network has no module for"
    return None


def file_kohya_problem(af: AdapterFile) -> str | None:
    """``kohya_cannot_load`` for a file read without a model (from its tensors and module names)."""
    for name, t in af.modules.items():
        if keys.LORA_DOWN not in t:
            return "it holds LyCORIS modules (LoHa, LoKr, full or norm)"
        if keys.LORA_MID in t:
            return "it holds Tucker LoCon modules (a mid factor)"
        if keys.DORA_SCALE in t:
            return "it holds DoRA magnitudes"
        if keys.DIFF_B in t:
            return "it holds bias deltas (diff_b)"
        if keys.outside_kohya_network(name):
            return f"it adapts {name}, which kohya's network has no module for"
    return None


def readers_note(af: AdapterFile) -> list[str]:
    """Lines saying which common tools read ``af`` and, for DoRA files, how each applies it."""
    problem = file_kohya_problem(af)
    lines = []
    if problem is None:
        lines.append("reads in: A1111/Forge, ComfyUI, kohya sd-scripts (networks.lora), diffusers, LyCORIS, sdlora")
    else:
        algos = set(af.algorithms())
        diffusers = "" if algos - {"lora"} else ", diffusers (LoRA/LoCon part)"
        lines.append(f"reads in: A1111/Forge, ComfyUI, LyCORIS (lycoris.kohya), sdlora{diffusers}; not in kohya's "
                     f"own networks.lora: {problem}")
        if af.metadata.get("ss_network_module", LYCORIS_MODULE) != LYCORIS_MODULE:
            lines.append(f"ss_network_module says {af.metadata['ss_network_module']!r}: A1111/kohya would route it "
                         f"to the wrong loader; re-save it with sdlora (it writes {LYCORIS_MODULE!r})")
    if any(keys.DORA_SCALE in t for t in af.modules.values()):
        rows = sum(1 for t in af.modules.values() if keys.DORA_SCALE in t and _row_shaped(t[keys.DORA_SCALE]))
        shape = "row-shaped (per output)" if rows else "column-shaped (per input)"
        lines.append(f"DoRA magnitudes: {shape}. {DORA_RULES}")
    return lines


def _row_shaped(mag: torch.Tensor) -> bool:
    return mag.dim() < 2 or mag.shape[1] == 1


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, strength: float,
                rule: str) -> torch.Tensor:
    """W' of a DoRA module by ``rule`` ("sdlora", "comfyui", "a1111", as in this module's docstring): ``weight``
    W (out, in[, k, k]), ``delta`` ΔW of the same shape, ``magnitude`` m row-shaped (out, 1[, 1, 1]) or
    column-shaped (1, in[, 1, 1]); float tensors. What each client computes, for comparing them on a file."""
    wd = weight + delta
    row = magnitude.shape[0] == weight.shape[0] and (magnitude.dim() < 2 or magnitude.shape[1] == 1)
    if rule == "a1111":
        row = False  # A1111 takes column norms whatever the shape
    if rule == "comfyui" and row:
        norm = _row_norm(weight)
    else:
        norm = _row_norm(wd) if row else _col_norm(wd)
    mag = magnitude.reshape(-1, *[1] * (weight.dim() - 1)) if row and magnitude.dim() < 2 else magnitude
    scaled = wd * (mag / norm)
    if rule == "sdlora":
        return wd * (strength * (mag / norm - 1) + 1)
    if rule in ("comfyui", "a1111"):
        return weight + strength * (scaled - weight)
    raise ValueError(f"unknown DoRA rule {rule!r}; use sdlora, comfyui or a1111")


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))


def _col_norm(w: torch.Tensor) -> torch.Tensor:
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, w.shape[1], *[1] * (w.dim() - 2))
