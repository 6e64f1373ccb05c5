"""`extract`: a LoRA/LoCon from the difference of two checkpoints (a full fine-tune or a baked model).

For every layer of the ``full`` preset (attention/MLP Linear and 1×1 convs, resnet and resampler convs, the
text encoders' attention and MLP) ΔW = W_tuned − W_base is taken in float32 and factorised by SVD: rank
``rank`` for Linear / 1×1 layers, ``conv_rank`` for k×k convs (0 skips them), or by an energy share. The
file holds γ = 1 (alpha = rank), kohya names for the base's family.

Memory: the base model is opened with ``models.open_model`` (it gives the layers, names and family); the
tuned model is NOT instantiated: its tensors are read one at a time, from a diffusers folder's safetensors
files (``safe_open``) or from a single original-layout .safetensors file (``models.plan_single_file``).
Peak ≈ the base model + one tuned tensor + the SVD workspace of the largest layer (an SDXL 1280×1280×3×3
conv: 59 MB in float32, a few times that during its SVD). Anything else (a folder of .bin files) is opened
with ``open_model`` (peak: both models).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdlora.models import open_model, plan_single_file, read_entry
from sdlora.models.families import PIPELINE_NAMES
from sdlora.errors import ModelError
from sdlora.files.streaming import LazyFile
from sdlora.keys import normalize_module_path
from sdlora.networks import AdapterModule, preset_modules
from sdlora.tools.delta import Delta
from sdlora.tools.output import lora_module, output_dtype, output_name, write_network
from sdlora.tools.reference import Key, Reference
from sdlora.tools.report import Report
from sdlora.tools.svd import check_rank_options, is_kxk

_FOLDERS = PIPELINE_NAMES  # a diffusers folder holds each component under its pipeline name


class TunedWeights:
    """A tuned model's weights by (component, diffusers parameter path), read one tensor at a time:
    from a diffusers folder's safetensors files (``safe_open``), or from a single original-layout file
    through ``models.plan_single_file`` / ``read_entry`` (fused tensors, e.g. SD2's in_proj, are split once
    and their parts cached); anything else is opened with ``open_model``."""

    def __init__(self, path: str | Path, family: str):
        self.path = Path(path)
        self.model = None  # an opened BaseModel (fallback)
        self.plan = None  # a single file's SingleFilePlan
        self.handles: dict[str, dict[str, Any]] = {}  # component -> {tensor key: its LazyFile}
        self.entries: dict[tuple[str, str], Any] = {}  # (component, part) -> single-file entry
        self._shapes: dict[str, dict] = {}
        self._last: tuple[Any, list[torch.Tensor]] | None = None
        if (self.path / "model_index.json").is_file() and all(
                self._index(c) for c in _FOLDERS if (self.path / _FOLDERS[c]).is_dir()):
            return
        if self.path.is_file() and self.path.suffix == ".safetensors":
            self.plan = plan_single_file(self.path, family=family)
            for entry in self.plan.entries:
                for part in entry.parts:
                    self.entries[(entry.component, part)] = entry
            return
        self.model = open_model(self.path)
        if self.model.family != family:
            raise ModelError(f"{path} is a {self.model.family} model but the base is {family}; "
                             "extract from two models of one family")

    def _index(self, component: str) -> bool:
        """Open the safetensors files of one component folder; False when it has none."""
        folder = self.path / _FOLDERS[component]
        found = sorted(folder.glob("*.safetensors"))
        plain = [f for f in found if f.name.count(".") == 1]  # skip variants (x.fp16.safetensors) if plain exist
        chosen = plain or found
        if not chosen:
            return False
        table = {}
        for f in chosen:
            handle = LazyFile(f)
            table.update(dict.fromkeys(handle.keys, handle))
        self.handles[component] = table
        return True

    def get(self, component: str, name: str) -> torch.Tensor | None:
        """The tuned tensor of ``name`` (a parameter path of the base component), or None."""
        candidates = (name, f"text_model.{name}", name.removeprefix("text_model."))
        if self.model is not None:
            root = self.model.components().get(component)
            for candidate in candidates:
                try:
                    return None if root is None else root.get_parameter(candidate).detach()
                except AttributeError:
                    continue
            return None
        if self.plan is not None:
            return self._from_single_file(_FOLDERS[component], candidates)
        table = self.handles.get(component, {})
        for candidate in candidates:
            if candidate in table:
                return table[candidate].get(candidate)
        return None

    def _from_single_file(self, component: str, candidates) -> torch.Tensor | None:
        for candidate in candidates:
            entry = self.entries.get((component, candidate))
            if entry is None:
                continue
            if self._last is None or self._last[0] is not entry:
                if component not in self._shapes:
                    self._shapes[component] = self.plan.shapes(component)
                self._last = (entry, read_entry(self.plan, entry, self._shapes[component]))
            tensors = self._last[1]
            return None if tensors is None else tensors[entry.parts.index(candidate)]
        return None


def extract(base: str | Path | Any, tuned: str | Path, out: str | Path, *, rank: int | None = None,
            conv_rank: int | None = None, energy: float | None = None,
            dtype: str | torch.dtype | None = None) -> Report:
    """Write to ``out`` a LoRA/LoCon with ΔW ≈ tuned − base for every layer of the ``full`` preset that differs.

    ``base``: a model folder (or BaseModel); ``tuned``: a model folder or file of the same architecture.
    ``conv_rank`` defaults to ``rank``; 0 skips k×k convs. ``dtype``: output precision (default: the base's).
    Layers whose weights are identical are skipped; the report counts them and the other parameters
    (biases, norms, embeddings, layers outside the preset) that differ but a LoRA cannot hold."""
    check_rank_options(rank, energy, conv_rank, allow_zero_conv=True)
    model = base if hasattr(base, "components") else open_model(base)
    ref = Reference(model.family, model.components(), True, str(getattr(model, "source", base)))
    weights = TunedWeights(tuned, model.family)
    first = next(iter(ref.models["unet"].parameters()))
    out_dtype = output_dtype(dtype, first.dtype)
    report = Report("extract", str(out))
    modules: dict[Key, AdapterModule] = {}
    used: set[tuple[str, str]] = set()
    unchanged = skipped = 0
    for component, root in ref.models.items():
        for path in preset_modules(root, component, "full"):
            layer = root.get_submodule(path)
            used.add((component, f"{path}.weight"))
            r = (rank if conv_rank is None else conv_rank) if is_kxk(tuple(layer.weight.shape)) else rank
            diff = _difference(weights, component, f"{path}.weight", layer.weight)
            if diff is None:
                unchanged += 1
                continue
            if r == 0:
                skipped += 1
                continue
            key = (component, normalize_module_path(component, path))
            name = output_name(key, ref, "kohya", None)
            module, fit = lora_module(layer, Delta(weight=diff), r, energy, 1.0, out_dtype, name)
            modules[key] = module
            report.fits.append(fit)
    others = _other_differences(ref, weights, used)
    write_network(out, modules, ref, dialect="kohya", unet_names=None, dtype=out_dtype,
                  v_prediction=bool(getattr(model, "v_prediction", False)),
                  extra={"sdlora_extract": json.dumps({"base": str(base), "tuned": str(tuned), "rank": rank,
                                                       "conv_rank": conv_rank, "energy": energy})})
    report.modules = len(modules)
    report.notes.append(f"{unchanged} layers are identical in both models (skipped)")
    if skipped:
        report.notes.append(f"{skipped} k×k conv layers differ but were skipped (--conv-rank 0)")
    if others:
        report.notes.append(f"{len(others)} other parameters differ and are not in the LoRA "
                            f"(biases, norms, embeddings, layers outside the preset), e.g. {', '.join(others[:3])}")
    return report


def _difference(weights: TunedWeights, component: str, name: str, w0: torch.Tensor) -> torch.Tensor | None:
    """W_tuned − W_base in float32, or None when they are identical."""
    w1 = weights.get(component, name)
    if w1 is None:
        raise ModelError(f"{weights.path} has no {component} weight {name}; extract from two models of one "
                         "architecture")
    if tuple(w1.shape) != tuple(w0.shape):
        raise ModelError(f"{component} {name} has shape {tuple(w1.shape)} in {weights.path} but {tuple(w0.shape)} "
                         "in the base; extract from two models of one architecture")
    if w1.dtype == w0.dtype and torch.equal(w1, w0.detach()):
        return None
    return w1.float() - w0.detach().float()


def _other_differences(ref: Reference, weights: TunedWeights, used: set[tuple[str, str]]) -> list[str]:
    """Parameters outside the extracted layers whose tuned value differs from the base's."""
    found = []
    for component, root in ref.models.items():
        for name, p in root.named_parameters():
            if (component, name) in used:
                continue
            w1 = weights.get(component, name)
            if w1 is not None and (w1.shape != p.shape or not torch.equal(w1.to(p.dtype), p.detach())):
                found.append(f"{component}.{name}")
    return found
