"""`resize`: re-rank any adapter (LoRA, LoCon, LoHa, LoKr, full) into a LoRA/LoCon by SVD of each module's ΔW.

Scale: each module keeps its γ = alpha/rank (γ = 1 for full and full-rank LoKr): the new alpha is
γ·new rank, and the factors carry √(S/γ) each, so γ·up@down is the best rank-r approximation of the old
γ·ΔW and a strength a user chose means the same. Resizing a LoRA to its own rank is lossless (ΔW has
that rank). DoRA modules stay DoRA: the directional γ·ΔW is re-ranked and the magnitude (dora_scale) is
kept, so no base weights are needed; their error is that of the directional part. Bias and norm deltas
are written unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdlora.networks import AdapterModule
from sdlora.tools.delta import module_delta
from sdlora.tools.output import carried_metadata, check_dialect, lora_module, output_dtype, output_name, write_network
from sdlora.tools.reference import Key, ModelLike
from sdlora.tools.report import Report
from sdlora.tools.sources import read_source
from sdlora.tools.svd import check_rank_options, is_kxk


def resize(path: str | Path, out: str | Path, *, rank: int | None = None, energy: float | None = None,
           conv_rank: int | None = None, model: ModelLike = None, family: str | None = None,
           to: str | None = None, unet_names: str | None = None,
           dtype: str | torch.dtype | None = None) -> Report:
    """Write to ``out`` a LoRA/LoCon re-ranking every module of ``path``.

    ``rank``: the rank of Linear and 1×1 modules (capped at full rank); ``conv_rank``: of k×k convs (default
    ``rank``); ``energy`` in (0, 1]: per module the smallest rank keeping that share of ΔW's squared singular
    values (capped by ``rank`` when both are given). The output keeps the input's format and names unless
    ``to`` / ``unet_names`` say otherwise, and its precision unless ``dtype`` does.
    """
    check_rank_options(rank, energy, conv_rank)
    if to is not None or unet_names is not None:
        check_dialect(to or "kohya", unet_names)
    src = read_source(path, family, model)
    ref = src.ref
    dialect, style = to or src.dialect, unet_names or src.unet_names
    out_dtype = output_dtype(dtype, src.dtype)
    names = {key: output_name(key, ref, dialect, style) for key in src.modules}
    report = Report("resize", str(out))
    modules: dict[Key, AdapterModule] = {}
    for key, tensors in src.modules.items():
        layer = ref.layer(key)
        delta = module_delta(layer, tensors, dora="keep", where=f"{src.path}: {src.names[key]}")
        r = conv_rank if conv_rank is not None and delta.weight is not None and is_kxk(delta.weight.shape) else rank
        module, fit = lora_module(layer, delta, r, energy, delta.gamma, out_dtype, names[key])
        modules[key] = module
        if fit is not None:
            report.fits.append(fit)
    write_network(out, modules, ref, dialect=dialect, unet_names=style, dtype=out_dtype,
                  carried=carried_metadata(src.file.metadata),
                  extra={"sdlora_resize": json.dumps({"source": str(path), "rank": rank, "conv_rank": conv_rank,
                                                      "energy": energy})})
    report.modules = len(modules)
    if any(m.dora_scale is not None for m in modules.values()):
        report.notes.append("DoRA modules kept their magnitude; their error is that of the directional ΔW")
    return report

