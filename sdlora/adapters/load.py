"""Loading adapter files onto a model: ``load_adapter`` matches a file's module names against the model's
layers (``keys.alias_table``), builds the adapter modules and returns a ``LoadReport``; in strict mode any
unmatched key or shape error refuses the whole file before the model is touched."""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sdlora import keys
from sdlora.adapters.read import AdapterFile, module_algo
from sdlora.errors import AdapterFileError
from sdlora.files import tensors as files
from sdlora.models.families import FAMILY_NAMES
from sdlora.networks import ALGORITHMS, AdapterModule, Network


@dataclass
class LoadReport:
    """What a load matched. ``ok`` is true when every key was used and every shape fitted."""

    path: str
    family: str | None
    matched: dict[str, int] = field(default_factory=dict)  # component -> modules
    algorithms: dict[str, int] = field(default_factory=dict)
    unmatched_keys: list[str] = field(default_factory=list)
    shape_errors: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # "KEY and KEY name the same layer (component path)"

    @property
    def ok(self) -> bool:
        return not self.unmatched_keys and not self.shape_errors and not self.duplicates

    @property
    def total_matched(self) -> int:
        return sum(self.matched.values())

    def summary(self, limit: int = 5) -> str:
        parts = [f"matched {self.total_matched} modules (" +
                 ", ".join(f"{k}: {v}" for k, v in sorted(self.matched.items())) + ")"]
        if self.unmatched_keys:
            shown = ", ".join(self.unmatched_keys[:limit])
            more = f" and {len(self.unmatched_keys) - limit} more" if len(self.unmatched_keys) > limit else ""
            parts.append(f"{len(self.unmatched_keys)} keys match no layer of the model: {shown}{more}")
        if self.shape_errors:
            shown = "; ".join(self.shape_errors[:limit])
            more = f" and {len(self.shape_errors) - limit} more" if len(self.shape_errors) > limit else ""
            parts.append(f"{len(self.shape_errors)} modules do not fit their layer: {shown}{more}")
        if self.duplicates:
            shown = "; ".join(self.duplicates[:limit])
            more = f" and {len(self.duplicates) - limit} more" if len(self.duplicates) > limit else ""
            parts.append(f"{len(self.duplicates)} layers are named twice (only the first would load): {shown}{more}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return dict(path=self.path, family=self.family, matched=self.matched, algorithms=self.algorithms,
                    unmatched_keys=self.unmatched_keys, shape_errors=self.shape_errors,
                    duplicates=self.duplicates, ok=self.ok)


def adaptable_paths(root: nn.Module) -> list[str]:
    """Every module path of ``root`` an adapter file may target (Linear, Conv2d, GroupNorm, LayerNorm)."""
    kinds = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
    return [n for n, m in root.named_modules() if n and isinstance(m, kinds)]


def unet_config_of(models: dict[str, nn.Module]) -> Any:
    unet = models.get("unet")
    return getattr(unet, "config", None)


def _raw_path(root: nn.Module, canonical: str) -> str:
    """The named_modules path of a canonical (text_model-less) path in ``root``."""
    try:
        root.get_submodule(canonical)
        return canonical
    except AttributeError:
        return f"text_model.{canonical}"


def load_adapter(source: str | Path | AdapterFile, models: dict[str, nn.Module], family: str, *,
                 strict: bool = True, multiplier: float = 1.0, attach: bool = True,
                 allow_pickle: bool = False, check_family: bool = True) -> tuple[Network, LoadReport]:
    """Read an adapter file for ``models`` ({"unet": ..., "te1": ..., "te2": ...}) of ``family``.

    Returns the Network (attached in bypass mode when ``attach``) and its LoadReport. With ``strict``
    (the CLI default) unmatched keys or shape errors raise AdapterFileError naming them, and nothing is
    attached; otherwise the rest loads and one warning carries the report.
    """
    try:
        af = source if isinstance(source, AdapterFile) else AdapterFile.read(source, allow_pickle=allow_pickle)
    except files.PickleRefused as exc:
        raise exc.with_hint("pass allow_pickle=True to load its tensors with torch.load(weights_only=True)") from None
    detected = af.detect_family()
    if check_family and detected is not None and detected != family:
        raise AdapterFileError(
            f"{af.path}: this is an {FAMILY_NAMES[detected]} adapter; the model is {FAMILY_NAMES.get(family, family)}. "
            f"Use it with an {FAMILY_NAMES[detected]} model")
    present = {c: m for c, m in models.items() if m is not None}
    table = keys.alias_table({c: adaptable_paths(m) for c, m in present.items()}, family, unet_config_of(present))
    report = LoadReport(path=af.path, family=detected, unmatched_keys=list(af.unknown_keys))
    built: dict[tuple[str, str], AdapterModule] = {}
    names: dict[tuple[str, str], str] = {}  # the file name that claimed each layer first
    for name, tensors in af.modules.items():
        target = table.get(name)
        if target is None:
            report.unmatched_keys.extend(f"{name}.{s}" for s in tensors)
            continue
        component, path = target
        root = present[component]
        where = (component, _raw_path(root, path))
        if where in names:  # e.g. kohya and PEFT names of one module in one file
            first, second = sorted((names[where], name))  # the same sentence whatever the file order
            report.duplicates.append(f"{first} and {second} ({component} {path})")
            continue
        names[where] = name
        try:
            module = module_from_file_tensors(root.get_submodule(where[1]), tensors)
        except (ValueError, TypeError, KeyError, RuntimeError, ArithmeticError, IndexError) as exc:
            report.shape_errors.append(f"{name}: {exc}")
            continue
        built[where] = module
    report.matched = dict(collections.Counter(c for c, _ in built))
    report.algorithms = dict(collections.Counter(m.algo for m in built.values()))
    if not built and not report.shape_errors:
        raise AdapterFileError(f"{af.path}: no key of this file matches a layer of the model ({report.summary()}); "
                               "it is for another model or in a format sdlora does not know")
    if not report.ok:
        if strict:
            raise AdapterFileError(f"{af.path}: refused (strict): {report.summary()}. The model is unchanged; "
                                   "load with strict=False (CLI: --no-strict) to apply the rest")
        warnings.warn(f"{af.path}: partial load: {report.summary()}", stacklevel=2)
    network = Network(present, built)
    network.eval()
    network.set_multiplier(multiplier)
    if attach:
        network.attach()
    return network, report


def module_from_file_tensors(layer: nn.Module, tensors: dict[str, torch.Tensor]) -> AdapterModule:
    """An adapter module on ``layer`` from one module's file tensors (canonical suffixes)."""
    algo = module_algo(tensors)
    if algo is None:
        raise ValueError("no weights for a known algorithm")
    tensors = dict(tensors)
    for k in ("scale", "on_input"):
        tensors.pop(k, None)
    if algo == "lora" and not all(s in tensors for s in ALGORITHMS["lora"].file_suffixes):
        raise ValueError("a LoRA module needs both " + " and ".join(n.removesuffix(".weight") for n in ALGORITHMS["lora"].file_suffixes))
    dora = tensors.get(AdapterModule.dora_suffix)
    if dora is not None and dora.dim() == 1:  # PEFT's magnitude vector: (out,)
        tensors[AdapterModule.dora_suffix] = dora.reshape(-1, *[1] * (layer.weight.dim() - 1))
    if algo == "norm" and not isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
        raise ValueError(f"w_norm/b_norm target a norm layer, not {type(layer).__name__}")
    if algo in ("lora", "loha", "lokr", "full") and isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
        raise ValueError(f"a {algo} module cannot target the norm layer {type(layer).__name__}")
    module = ALGORITHMS[algo].from_tensors(layer, tensors)
    module.requires_grad_(False)
    return module

