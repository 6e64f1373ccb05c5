"""`merge`: one adapter whose ΔW is the weighted sum of the inputs' ΔW, module by module.

- ``concat`` (plain LoRA/LoCon inputs): the factors are stacked along the rank axis,
  up = [c₁·up₁ | c₂·up₂ | …] (out, Σr), down = [down₁; down₂; …] (Σr, in[, kh, kw]) with cᵢ = wᵢ·γᵢ/γ,
  so γ·up@down = Σ wᵢ·γᵢ·upᵢ@downᵢ exactly; the rank is the sum of the inputs' ranks.
- ``svd`` (any algorithm; DoRA folded at strength 1 against the base weights of ``model``): the exact sum
  ΣwᵢΔWᵢ is built from each module's ΔW and re-factorised by SVD into a LoRA/LoCon of the target rank
  (or the smallest rank reaching an energy share), with the relative Frobenius error reported.

Scale: where every input module of a layer has the same γ = alpha/rank, the output keeps it
(alpha = γ·new rank); otherwise γ = 1 (alpha = rank). Either way γ·up@down is the merged ΔW at strength 1.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from sdlora.adapters import FAMILY_NAMES
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.networks import AdapterModule
from sdlora.networks.lora import LoRAModule
from sdlora.tools.delta import Delta, algo_of, module_delta
from sdlora.tools.output import check_dialect, lora_module, output_dtype, output_name, write_network
from sdlora.tools.reference import Key, ModelLike, Reference, open_reference
from sdlora.tools.report import ModuleFit, Report
from sdlora.tools.sources import ResolvedFile, file_family, read_file, resolve_file
from sdlora.tools.svd import check_rank_options, is_kxk

METHODS = ("concat", "svd")


def parse_input(spec: str) -> tuple[str, float]:
    """"FILE" or "FILE:WEIGHT" -> (file, weight); a suffix that is not a number stays part of the path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def merge(inputs: Sequence[tuple[str | Path, float]], out: str | Path, *, method: str | None = None,
          rank: int | None = None, conv_rank: int | None = None, energy: float | None = None,
          model: ModelLike = None, family: str | None = None, to: str | None = None,
          unet_names: str | None = None, dtype: str | torch.dtype | None = None) -> Report:
    """Write to ``out`` the adapter whose ΔW is Σ wᵢ·ΔWᵢ over ``inputs`` [(file, weight), ...].

    ``method`` defaults to "svd" when ``rank`` or ``energy`` is given, else "concat". ``conv_rank`` is the
    rank of k×k convs (default ``rank``). ``model`` gives shapes and base weights (needed for DoRA inputs);
    without it the family's shipped meta skeleton is used. ``to`` is the output format (default: the
    inputs' common one, else kohya), ``unet_names`` the kohya UNet naming (sgm/diffusers), ``dtype`` the
    output precision (default: the inputs'). Returns the Report (errors per module for svd).
    """
    if not inputs:
        raise ConfigError("give at least one adapter to merge (FILE[:WEIGHT] ...)")
    method = method or ("svd" if rank is not None or energy is not None else "concat")
    if method not in METHODS:
        raise ConfigError(f"unknown merge method {method!r}; use concat or svd")
    if method == "svd":
        check_rank_options(rank, energy, conv_rank)
    elif rank is not None or energy is not None or conv_rank is not None:
        raise ConfigError("--method concat keeps every input's rank (their sum); drop --rank/--energy or use "
                          "--method svd")
    if to is not None or unet_names is not None:
        check_dialect(to or "kohya", unet_names)
    ref, sources = _read_all(inputs, family, model)
    srcs = [s for s, _ in sources]
    dialect = to or _common([s.dialect for s in srcs]) or "kohya"
    style = unet_names or _common([s.unet_names for s in srcs if s.unet_names])
    out_dtype = output_dtype(dtype, _common([s.dtype for s in srcs]) or torch.float32)
    order: dict[Key, None] = {}
    for s in srcs:
        order.update(dict.fromkeys(s.modules))
    names = {key: output_name(key, ref, dialect, style) for key in order}  # refuses names the format lacks
    _check_inputs(srcs, method, ref)
    report = Report(f"merge ({method})", str(out))
    modules: dict[Key, AdapterModule] = {}
    for key in order:
        layer = ref.layer(key)
        parts = [(w, s) for s, w in sources if key in s.modules]
        deltas = [module_delta(layer, s.modules[key], where=f"{s.path}: {s.names[key]}") for _, s in parts]
        total = Delta()
        for (w, _), d in zip(parts, deltas):
            total = total.add(d, w)
        gammas = {d.gamma for d in deltas if d.weight is not None}
        gamma = gammas.pop() if len(gammas) == 1 and total.weight is not None else 1.0
        if method == "concat":
            module, fit = _concat(layer, key, parts, deltas, total, gamma, out_dtype, names[key])
        else:
            r = conv_rank if conv_rank is not None and total.weight is not None and is_kxk(total.weight.shape) else rank
            module, fit = lora_module(layer, total, r, energy, gamma, out_dtype, names[key])
        modules[key] = module
        if fit is not None:
            report.fits.append(fit)
    inputs_meta = [{"file": str(s.path), "weight": w} for s, w in sources]
    write_network(out, modules, ref, dialect=dialect, unet_names=style, dtype=out_dtype,
                  extra={"sdlora_merge": json.dumps({"method": method, "inputs": inputs_meta, "rank": rank,
                                                     "conv_rank": conv_rank, "energy": energy})})
    report.modules = len(modules)
    report.notes.append("inputs: " + ", ".join(f"{s.path} x{w:g}" for s, w in sources))
    return report


def _read_all(inputs, family, model) -> tuple[Reference, list[tuple[ResolvedFile, float]]]:
    files = [(read_file(p), float(w)) for p, w in inputs]
    fams = {af.path: file_family(af, family) for af, _ in files}
    known = {f for f in fams.values() if f is not None}
    if len(known) > 1:
        listing = ", ".join(f"{p} is {FAMILY_NAMES[f]}" for p, f in fams.items() if f)
        raise AdapterFileError(f"the inputs are of different model families ({listing}); merge adapters of one "
                               "family only")
    ref = open_reference(known.pop() if known else family, model)
    return ref, [(resolve_file(af, ref), w) for af, w in files]


def _check_inputs(sources: list[ResolvedFile], method: str, ref: Reference) -> None:
    """Refuse, before any work, what the method cannot merge exactly."""
    for src in sources:
        for key, tensors in src.modules.items():
            algo = algo_of(tensors)
            if method == "concat" and not (algo in ("lora", "norm") or (algo == "full" and "diff" not in tensors)):
                raise ConfigError(f"{src.path}: {src.names[key]} is {algo}; --method concat joins plain LoRA/LoCon "
                                  "factors only. Use --method svd --rank R" +
                                  (" with --model BASE (DoRA needs the base weights)" if "dora" in algo else ""))
            if "dora" in algo and not ref.has_weights:
                raise ConfigError(f"{src.path}: {src.names[key]} is DoRA, whose change depends on the base weights; "
                                  "pass --model with the base model the adapter was made for")


def _common(values: list):
    """The value all of ``values`` share, else None."""
    return values[0] if values and all(v == values[0] for v in values) else None


def _concat(layer, key: Key, parts: list[tuple[float, ResolvedFile]], deltas: list[Delta], total: Delta, gamma: float,
            dtype: torch.dtype, name: str) -> tuple[AdapterModule, ModuleFit | None]:
    """The exact concatenation of plain LoRA/LoCon factors (bias and norm deltas summed)."""
    if total.weight is None:
        return lora_module(layer, total, None, None, 1.0, dtype, name)
    ups, downs = [], []
    down_key, up_key = LoRAModule.file_suffixes
    shape = tuple(layer.weight.shape)
    for (w, src), d in zip(parts, deltas):
        if d.weight is None:  # a bias-only part: its diff_b is in total.bias
            continue
        tensors = src.modules[key]
        down = tensors[down_key].float()
        r = down.shape[0]
        downs.append(down.reshape(r, *shape[1:]))
        ups.append(tensors[up_key].float().reshape(shape[0], r, *[1] * (len(shape) - 2)) * (w * d.gamma / gamma))
    up, down = torch.cat(ups, 1), torch.cat(downs, 0)
    tensors = {down_key: down.to(dtype), up_key: up.to(dtype),
               "alpha": torch.tensor(gamma * down.shape[0], dtype=torch.float32)}
    if total.bias is not None:
        tensors["diff_b"] = total.bias.to(dtype)
    module = LoRAModule.from_tensors(layer, tensors)
    module.requires_grad_(False)
    with torch.no_grad():
        got = module.delta_weight().double()
    target = total.weight.double()
    return module, ModuleFit(name, down.shape[0], float((target - got).norm()), float(target.norm()))
