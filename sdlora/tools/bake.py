"""Bake adapters into a base checkpoint, streaming one tensor at a time.

    bake("base.safetensors", [AdapterSpec("style.safetensors", 0.8)], "baked.safetensors", dtype="fp16")

The base (a single original-layout file or a diffusers folder) is never loaded whole: its models are built
on the meta device (shapes only), adapters are read onto them, and the output is written tensor by tensor
(``sdlora.streaming``): each tensor is read, the adapters that touch its layer are folded in with
``networks.fold.fold_weight`` / ``fold_bias`` (float32, the same function ``AdapterStack.fuse`` uses, at the same
per-module strengths: strength, text-encoder strength and block weights), cast to the output dtype and
written. Peak memory is the adapters plus a few tensors, well under one copy of the model. The output is
atomic, a single file (with the configs embedded, see ``models``) or a diffusers folder.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sdlora.inference import blocks
from sdlora.models import checkpoint
from sdlora.files import tensors as files
from sdlora import models
from sdlora.files import streaming
from sdlora.models import tokenizers
from sdlora.adapters import AdapterFile, load_adapter
from sdlora.errors import AdapterFileError, ModelError
from sdlora.networks import AdapterModule, Network
from sdlora.inference.stack import AdapterSpec, block_factors, module_multiplier
from sdlora.networks.fold import fold_bias, fold_weight

Getter = Callable[[str, str], torch.Tensor]


@dataclass
class Source:
    """A base model opened lazily: family, configs, meta models and a tensor getter (component, key)."""

    family: str
    prediction_type: str | None
    configs: dict[str, dict]
    skeletons: dict[str, nn.Module]
    get: Getter
    dtype_of: Callable[[str, str], torch.dtype]
    folder: Path | None = None  # a diffusers source folder (its tokenizers can be copied)


# ------------------------------------------------------------------------------------------ sources
def open_source(path: str | Path, *, family: str | None = None, prediction_type: str | None = None,
                config: str | Path | None = None) -> Source:
    """The base model at ``path`` (single file or diffusers folder), without reading any weights."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _folder_source(path, family, models.check_prediction(prediction_type))
    if not path.is_file():
        raise ModelError(f"{path}: no such file or folder; give a diffusers model folder or a .safetensors file")
    plan = models.plan_single_file(path, family=family, prediction_type=prediction_type, config=config)
    shapes = {c: plan.shapes(c) for c in plan.skeletons}
    index = {(e.component, p): e for e in plan.entries for p in e.parts}
    cache: dict[str, Any] = {"entry": None, "tensors": {}}

    def get(component: str, key: str) -> torch.Tensor:
        entry = index[(component, key)]
        if cache["entry"] is not entry:
            tensors = models.read_entry(plan, entry, shapes[component])
            if tensors is None:
                models.load_state_dicts(plan, components=(component,))  # raises the precise error
                raise ModelError(f"{path}: {entry.key} is missing")
            cache["entry"], cache["tensors"] = entry, dict(zip(entry.parts, tensors))
        return cache["tensors"][key]

    def dtype_of(component: str, key: str) -> torch.dtype:
        entry = index[(component, key)]
        for k in [entry.key, *checkpoint.alternatives(entry.key)]:
            if k in plan.file:
                return plan.file.dtype(k)
        return torch.float32

    _check_complete(plan)
    pred = plan.prediction_type
    if pred is None and plan.config_source == "user":
        pred = plan.configs.get("scheduler", {}).get("prediction_type")
    return Source(plan.family, pred, plan.configs, plan.skeletons, get, dtype_of)


def _check_complete(plan: models.SingleFilePlan) -> None:
    """Raise ModelError (as opening would) when the file lacks tensors the layout needs; reads no data."""
    missing = {c: [] for c in plan.skeletons}
    total = {c: 0 for c in plan.skeletons}
    for e in plan.entries:
        total[e.component] += 1
        if not any(k in plan.file for k in [e.key, *checkpoint.alternatives(e.key)]):
            missing[e.component].append(e.key)
    models.raise_missing(plan, missing, total, [])


def _component_files(folder: Path) -> list[Path]:
    files_ = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files_ if f.name.count(".") == 1]
    return plain or files_


def _folder_source(path: Path, family: str | None, prediction_type: str | None) -> Source:
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json)")
    cfgs = models.read_config_folder(path)
    fam = models.check_family(family) or models.detect_family(cfgs["unet"], cfgs.get("text_encoder_2"))
    skeletons = models.build_skeletons(fam, cfgs)
    where: dict[str, dict[str, tuple[streaming.LazyFile, str]]] = {}
    for name, model in skeletons.items():
        paths = _component_files(path / name)
        if not paths:
            raise ModelError(f"{path / name}: no .safetensors weights (pickle .bin files are not read); save the "
                             "model again with safetensors")
        by_key: dict[str, tuple[streaming.LazyFile, str]] = {}
        for f in map(streaming.LazyFile, paths):
            for k in f.keys:
                canon = checkpoint.canonical_te_key(k) if name.startswith("text_encoder") else k
                by_key[canon] = (f, k)
        table = {}
        for k in model.state_dict():
            canon = checkpoint.canonical_te_key(k) if name.startswith("text_encoder") else k
            if canon not in by_key:
                raise ModelError(f"{path / name}: the weights lack {k}; the folder is incomplete or of another "
                                 "model")
            table[k] = by_key[canon]
        where[name] = table

    def get(component: str, key: str) -> torch.Tensor:
        f, k = where[component][key]
        return f.get(k)

    def dtype_of(component: str, key: str) -> torch.dtype:
        f, k = where[component][key]
        return f.dtype(k)

    pred = prediction_type or cfgs.get("scheduler", {}).get("prediction_type") or "epsilon"
    return Source(fam, pred, cfgs, skeletons, get, dtype_of, folder=path)


# ----------------------------------------------------------------------------------------- adapters
def _adapter_components(source: Source) -> dict[str, nn.Module]:
    out = {"unet": source.skeletons["unet"], "te1": source.skeletons["text_encoder"]}
    if "text_encoder_2" in source.skeletons:
        out["te2"] = source.skeletons["text_encoder_2"]
    return out


def load_networks(source: Source, specs: Sequence[AdapterSpec], *, strict: bool = True
                  ) -> list[tuple[AdapterSpec, Network, AdapterFile]]:
    """Each adapter read onto the meta models (nothing attached), with its module strengths set."""
    comps = _adapter_components(source)
    unet_config = source.skeletons["unet"].config
    out = []
    for spec in specs:
        af = AdapterFile.read(spec.path)
        network, _ = load_adapter(af, comps, source.family, strict=strict, attach=False)
        bw = blocks.parse_block_weights(spec.block_weights, source.family) if spec.block_weights is not None \
            else None
        strength = blocks.finite_strength(spec.strength, f"{spec.path}: the strength")
        te = None if spec.te_strength is None else blocks.finite_strength(spec.te_strength, f"{spec.path}: te_strength")
        for module, component, w in block_factors(network, bw, unet_config):
            module.multiplier = module_multiplier(component, strength, te, w)
        out.append((spec, network, af))
    return out


def layer_groups(networks: Sequence[Network]) -> dict[tuple[str, str], list[AdapterModule]]:
    """(component pipeline name, module path) -> the adapter modules on that layer, in adapter order."""
    names = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}
    groups: dict[tuple[str, str], list[AdapterModule]] = {}
    for network in networks:
        for component, path, module in network.items_by_module():
            if module.multiplier != 0.0:
                groups.setdefault((names[component], path), []).append(module)
    return groups


def baked_getter(source: Source, groups: dict[tuple[str, str], list[AdapterModule]],
                 dtype: torch.dtype | None = None) -> Getter:
    """get(component, key): the source tensor with the adapters on its layer folded in (computed in float32;
    a touched weight comes back in its stored dtype when that is the output ``dtype`` (None: as stored),
    float32 otherwise; a touched bias in float32), the source tensor itself when nothing touches it."""

    @torch.no_grad()
    def get(component: str, key: str) -> torch.Tensor:
        t = source.get(component, key)
        module_path, _, param = key.rpartition(".")
        mods = groups.get((component, module_path))
        if not mods:
            return t
        if param == "weight":
            # fold_weight casts back to the dtype it is given, exactly as the writer would cast a float32
            # result; given the stored tensor it also sums into its own float32 copy (no extra copy).
            return _finite(component, key, t, fold_weight(t if dtype in (None, t.dtype) else t.float(), mods), dtype)
        if param == "bias":
            return _finite(component, key, t, fold_bias(t.float(), mods), dtype)
        return t

    return get


def _finite(component: str, key: str, base: torch.Tensor, baked: torch.Tensor, dtype: torch.dtype | None
            ) -> torch.Tensor:
    """``baked``, or AdapterFileError when it (cast to the output ``dtype``) holds NaN/Inf that ``base`` did
    not: raised while the temporary output is written, so nothing is renamed into place."""
    written = baked if dtype is None or not baked.is_floating_point() else baked.to(dtype)
    if written.is_floating_point() and not torch.isfinite(written).all() and torch.isfinite(base).all():
        raise AdapterFileError(f"baking {component} {key} gives NaN or Inf values (the base weight is finite); "
                               "an adapter's strength is too large for the output dtype or the adapter is broken. "
                               "Nothing was written; lower the strength or bake in fp32")
    return baked


# --------------------------------------------------------------------------------------------- bake
def bake(model: str | Path, adapters: Sequence[AdapterSpec], out: str | Path, *, format: str | None = None,
         dtype: torch.dtype | str | None = None, tokenizer: str | Path | None = None, family: str | None = None,
         prediction_type: str | None = None, config: str | Path | None = None, strict: bool = True,
         progress: bool = True) -> Path:
    """Fold ``adapters`` at their strengths into the base ``model`` and write ``out`` (single file for a
    ``.safetensors`` path unless ``format`` says otherwise; diffusers folder else), cast to ``dtype``
    (default: as stored). Adapters that do not fit raise AdapterFileError before anything is written."""
    out = Path(out).expanduser()
    fmt = models.resolve_format(out, format)
    dtype = files.parse_dtype(dtype)
    source = open_source(model, family=family, prediction_type=prediction_type, config=config)
    loaded = load_networks(source, adapters, strict=strict)
    groups = layer_groups([n for _, n, _ in loaded])
    get = baked_getter(source, groups, dtype)
    pred = source.prediction_type or _probe(source)
    keys = {c: list(m.state_dict()) for c, m in source.skeletons.items()}
    shapes = {c: {k: tuple(v.shape) for k, v in m.state_dict().items()} for c, m in source.skeletons.items()}
    dtypes = {c: {k: source.dtype_of(c, k) for k in ks} for c, ks in keys.items()}
    cfgs = dict(source.configs, scheduler=dict(source.configs.get("scheduler", {}), prediction_type=pred))
    baked = json.dumps([dict(path=Path(s.path).name, hash=files.short_hash(s.path), strength=s.strength,
                             te_strength=s.te_strength, block_weights=_spec_text(s.block_weights))
                        for s, _, _ in loaded])
    bar = _bar(sum(len(k) for k in keys.values()), progress)
    with bar:
        if fmt == "single-file":
            entries = models.layout_for(source.family, source.skeletons)
            positions = int(source.skeletons["text_encoder"].config.max_position_embeddings)
            items = models.single_file_items(source.family, entries, shapes, dtypes, _counted(get, bar), dtype,
                                             pred == "v_prediction", positions)
            meta = models.single_file_metadata(source.family, pred, _clean(cfgs), out.stem)
            meta["sdlora.baked"] = baked
            streaming.write_streamed(out, items, meta)
            return out
        toks = _tokenizers(source, tokenizer)
        with streaming.atomic_folder(out) as tmp:
            models.write_folder_configs(tmp, source.family, _clean(cfgs), toks, pred)
            counted = _counted(get, bar)
            for name in source.skeletons:
                items = models.component_items(name, keys[name], shapes[name], dtypes[name],
                                               lambda k, n=name: counted(n, k), dtype)
                streaming.write_streamed(tmp / name / models.WEIGHT_FILES[name], items,
                                         {"format": "pt", "sdlora.baked": baked})
    return out


def _spec_text(spec: Any) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    return ",".join(f"{float(v):g}" for v in spec)


def _clean(cfgs: dict[str, dict]) -> dict[str, dict]:
    return json.loads(json.dumps(cfgs, default=str))


def _tokenizers(source: Source, tokenizer: str | Path | None) -> list[Any]:
    if tokenizer is None and source.folder is not None and (source.folder / "tokenizer").is_dir():
        tokenizer = source.folder
    return tokenizers.find_tokenizers(source.family, tokenizer, what="a diffusers-folder output")


@torch.no_grad()
def _probe(source: Source) -> str:
    """Prediction type of an SD2 file that does not say (A1111's probe on its UNet), else epsilon."""
    if source.family != "sd2":
        return "epsilon"
    unet = source.skeletons["unet"]
    state = {k: source.get("unet", k).float() for k in unet.state_dict()}
    probe = models.build_skeletons(source.family, source.configs)["unet"]
    probe.load_state_dict(state, assign=True)
    del state
    return "v_prediction" if models.probe_v_prediction(probe) else "epsilon"


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="baking", unit="tensor", disable=not enabled)


def _counted(get: Getter, bar: Any) -> Getter:
    def counted(component: str, key: str) -> torch.Tensor:
        bar.update(1)
        return get(component, key)

    return counted
