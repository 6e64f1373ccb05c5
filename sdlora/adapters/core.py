"""Adapter files <-> Networks: every dialect in, kohya/LyCORIS (or diffusers/PEFT) out, never silently.

Reading: ``AdapterFile.read`` groups a file's tensors per module (``keys.split_key`` understands every
dialect) and says what it holds (algorithms, ranks, alphas, family). ``load_adapter`` matches its module
names against the model's layers (``keys.alias_table``), builds the adapter modules and returns a
``LoadReport``; in strict mode any unmatched key or shape error refuses the whole file before the model is
touched.

Writing: ``adapter_tensors`` names a Network's tensors in a dialect; ``save_adapter`` adds the kohya
``ss_*`` metadata, modelspec keys and hashes, and writes atomically through ``files``.
"""
from __future__ import annotations

import collections
import datetime as _dt
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sdlora import __version__, keys
from sdlora.files import tensors as files
from sdlora.errors import AdapterFileError
from sdlora.networks import ALGORITHMS, AdapterModule, Network
from sdlora.networks.full import FullModule, NormModule
from sdlora.networks.lokr import LoKrModule
from sdlora.networks.lora import LoRAModule

FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base"}
# Which algorithm a module holds, by the first suffix found (order matters: DoRA/alpha are extras).
_ALGO_BY_SUFFIX = (("lora_down.weight", "lora"), ("lora_up.weight", "lora"), ("hada_w1_a", "loha"),
                   ("lokr_w1", "lokr"), ("lokr_w1_a", "lokr"), ("diff", "full"), ("diff_b", "full"),
                   ("w_norm", "norm"))
_CROSS_ATTN_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_DIM = {1024: "sd2", 1280: "sdxl"}


def module_algo(tensors: dict[str, torch.Tensor]) -> str | None:
    """The algorithm of one module's tensors (suffix -> tensor), or None."""
    for suffix, algo in _ALGO_BY_SUFFIX:
        if suffix in tensors:
            return algo
    return None


def module_rank(tensors: dict[str, torch.Tensor]) -> int | None:
    algo = module_algo(tensors)
    if algo == "lora":
        t = tensors.get("lora_down.weight")
        return int(t.shape[0]) if t is not None else int(tensors["lora_up.weight"].shape[1])
    if algo == "loha":
        return int(tensors["hada_w1_b"].shape[0])
    if algo == "lokr":
        for k in ("lokr_w1_b", "lokr_w2_b"):
            if k in tensors:
                return int(tensors[k].shape[0])
    return None


# ------------------------------------------------------------------------------------------- reading
@dataclass
class AdapterFile:
    """A file's tensors grouped per module name as written in the file, with what can be told of them."""

    path: str
    metadata: dict[str, str]
    modules: dict[str, dict[str, torch.Tensor]]  # module name -> {canonical suffix: tensor}
    unknown_keys: list[str]  # keys with no known suffix
    dtype: str

    @classmethod
    def read(cls, path: str | Path, *, allow_pickle: bool = False) -> "AdapterFile":
        tensors, metadata = files.read_tensors(path, allow_pickle=allow_pickle)
        if not tensors:
            raise AdapterFileError(f"{path}: the file holds no tensors; it is not an adapter")
        return cls.from_tensors(tensors, metadata, str(path))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     path: str = "<memory>") -> "AdapterFile":
        modules: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
        unknown: list[str] = []
        for key, value in tensors.items():
            name, suffix = keys.split_key(key)
            if not suffix:
                unknown.append(key)
                continue
            if suffix == "dora_scale" and "lora_magnitude_vector" in key:
                value = value.reshape(-1)  # PEFT's magnitude is per output: (out,) Linear, (1, out, 1, 1) conv
            modules[name][suffix] = value
        # Files holding only an alpha for a module (no weights) are leftovers of other tools: unknown.
        for name in [n for n, t in modules.items() if module_algo(t) is None]:
            unknown.extend(f"{name}.{s}" for s in modules.pop(name))
        _peft_alphas(modules, metadata or {})
        dtypes = collections.Counter(str(t.dtype).replace("torch.", "") for t in tensors.values() if t.is_floating_point())
        return cls(path, dict(metadata or {}), dict(modules), sorted(unknown), ",".join(sorted(dtypes)) or "none")

    # ---- what it holds
    def algorithms(self) -> collections.Counter:
        c = collections.Counter()
        for t in self.modules.values():
            algo = module_algo(t)
            c[algo + ("+dora" if "dora_scale" in t else "")] += 1
        return c

    def ranks(self) -> list[int]:
        return [r for r in (module_rank(t) for t in self.modules.values()) if r is not None]

    def alphas(self) -> list[float]:
        out = []
        for t in self.modules.values():
            if module_algo(t) in ("lora", "loha", "lokr"):
                a = t.get("alpha")
                out.append(float(a) if a is not None and float(a) != 0 else float(module_rank(t) or 0))
        return out

    def component_of(self, name: str) -> str:
        if name.startswith(("lora_te2_", "text_encoder_2.")):
            return "te2"
        if name.startswith(("lora_te", "text_encoder.")) or "text_model" in name:
            return "te1"
        return "unet"

    def component_counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.component_of(n) for n in self.modules))

    def detect_family(self) -> str | None:
        """"sd1", "sd2", "sdxl" from names and shapes (cross-attention and text widths), else from metadata."""
        names = list(self.modules)
        if any(n.startswith(("lora_te2_", "text_encoder_2.")) for n in names):
            return "sdxl"
        for name, t in self.modules.items():
            if "attn2" in name and ("to_k" in name or "to_v" in name):
                width = _input_width(t)
                if width in _CROSS_ATTN_DIM:
                    return _CROSS_ATTN_DIM[width]
        for name, t in self.modules.items():
            if self.component_of(name) == "te1" and ("q_proj" in name or "fc1" in name):
                width = _input_width(t)
                if width in _TE_DIM:
                    return _TE_DIM[width]
                if width == 768:
                    return "sd1"
        version = self.metadata.get("ss_base_model_version", "")
        if version.startswith("sdxl"):
            return "sdxl"
        if version.startswith("sd_v2") or self.metadata.get("ss_v2") == "True":
            return "sd2"
        if version.startswith("sd_v1"):
            return "sd1"
        return None


def _peft_alphas(modules: dict[str, dict[str, torch.Tensor]], metadata: dict[str, str]) -> None:
    """Give PEFT-named LoRA modules without an ``alpha`` tensor the alpha of diffusers' ``lora_adapter_metadata``
    (PEFT's LoraConfig per component, keys ``<prefix>.lora_alpha`` / ``.alpha_pattern`` / ``.use_rslora``), as
    diffusers does when it loads the file; without it alpha = rank."""
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return
    if not isinstance(packed, dict):
        return
    for name, t in modules.items():
        prefix, _, path = name.partition(".")
        if "alpha" in t or module_algo(t) != "lora" or packed.get(f"{prefix}.lora_alpha") is None:
            continue
        rank = module_rank(t)
        alpha = float(packed[f"{prefix}.lora_alpha"])
        candidates = {path, path.removeprefix("text_model."), f"text_model.{path}"}
        for pattern, value in (packed.get(f"{prefix}.alpha_pattern") or {}).items():
            if any(re.match(rf"(.*\.)?({pattern})$", c) for c in candidates):
                alpha = float(value)
                break
        if packed.get(f"{prefix}.use_rslora"):
            alpha *= math.sqrt(rank)  # γ = alpha/sqrt(r), stored so that alpha/r gives it
        t["alpha"] = torch.tensor(alpha)


def _input_width(t: dict[str, torch.Tensor]) -> int | None:
    """The input width of the layer a module's tensors were made for (None when it cannot be told)."""
    if "lora_down.weight" in t:
        return int(t["lora_down.weight"].shape[1])
    if "hada_w1_b" in t and t["hada_w1_b"].dim() == 2 and "hada_t1" not in t:
        return int(t["hada_w1_b"].shape[1])
    if "diff" in t:
        return int(t["diff"].shape[1])
    return None


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadReport:
    """What a load matched. ``ok`` is true when every key was used and every shape fitted."""

    path: str
    family: str | None
    matched: dict[str, int] = field(default_factory=dict)  # component -> modules
    algorithms: dict[str, int] = field(default_factory=dict)
    unmatched_keys: list[str] = field(default_factory=list)
    shape_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unmatched_keys and not self.shape_errors

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
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return dict(path=self.path, family=self.family, matched=self.matched, algorithms=self.algorithms,
                    unmatched_keys=self.unmatched_keys, shape_errors=self.shape_errors, ok=self.ok)


def adaptable_paths(root: nn.Module) -> list[str]:
    """Every module path of ``root`` an adapter file may target (Linear, Conv2d, GroupNorm, LayerNorm)."""
    kinds = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
    return [n for n, m in root.named_modules() if n and isinstance(m, kinds)]


def _unet_config(models: dict[str, nn.Module]) -> Any:
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
    af = source if isinstance(source, AdapterFile) else AdapterFile.read(source, allow_pickle=allow_pickle)
    detected = af.detect_family()
    if check_family and detected is not None and detected != family:
        raise AdapterFileError(
            f"{af.path}: this is an {FAMILY_NAMES[detected]} adapter; the model is {FAMILY_NAMES.get(family, family)}. "
            f"Use it with an {FAMILY_NAMES[detected]} model")
    present = {c: m for c, m in models.items() if m is not None}
    table = keys.alias_table({c: adaptable_paths(m) for c, m in present.items()}, family, _unet_config(present))
    report = LoadReport(path=af.path, family=detected, unmatched_keys=list(af.unknown_keys))
    built: dict[tuple[str, str], AdapterModule] = {}
    for name, tensors in af.modules.items():
        target = table.get(name)
        if target is None:
            report.unmatched_keys.extend(f"{name}.{s}" for s in tensors)
            continue
        component, path = target
        root = present[component]
        layer = root.get_submodule(_raw_path(root, path))
        try:
            module = build_module(layer, tensors)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            report.shape_errors.append(f"{name}: {exc}")
            continue
        built[(component, _raw_path(root, path))] = module
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


def build_module(layer: nn.Module, tensors: dict[str, torch.Tensor]) -> AdapterModule:
    """An adapter module on ``layer`` from one module's file tensors (canonical suffixes)."""
    algo = module_algo(tensors)
    if algo is None:
        raise ValueError("no weights for a known algorithm")
    tensors = dict(tensors)
    for k in ("scale", "on_input"):
        tensors.pop(k, None)
    if algo == "lora" and ("lora_down.weight" not in tensors or "lora_up.weight" not in tensors):
        raise ValueError("a LoRA module needs both lora_down and lora_up")
    dora = tensors.get("dora_scale")
    if dora is not None and dora.dim() == 1:  # PEFT's lora_magnitude_vector: (out,)
        tensors["dora_scale"] = dora.reshape(-1, *[1] * (layer.weight.dim() - 1))
    if algo == "norm" and not isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
        raise ValueError(f"w_norm/b_norm target a norm layer, not {type(layer).__name__}")
    if algo in ("lora", "loha", "lokr", "full") and isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
        raise ValueError(f"a {algo} module cannot target the norm layer {type(layer).__name__}")
    module = ALGORITHMS[algo].from_tensors(layer, tensors)
    module.requires_grad_(False)
    return module


# ------------------------------------------------------------------------------------------ writing
DIALECTS = ("kohya", "peft")


def module_name(component: str, path: str, family: str, unet_config: Any, dialect: str = "kohya") -> str:
    if dialect == "kohya":
        return keys.kohya_name(component, path, family, unet_config)
    if dialect == "peft":
        return keys.peft_name(component, path)
    raise AdapterFileError(f"unknown key dialect {dialect!r}; use one of {', '.join(DIALECTS)}")


def adapter_tensors(network: Network, family: str, unet_config: Any = None, dialect: str = "kohya"
                    ) -> dict[str, torch.Tensor]:
    """The Network's tensors under file keys of ``dialect`` (kohya: ``lora_unet_…``; peft: ``unet.….lora_A.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for component, path, module in network.items_by_module():
        name = module_name(component, path, family, unet_config, dialect)
        state = {k: v.detach() for k, v in module.state_dict().items()}
        if dialect == "peft":
            state = _peft_state(module, state, name)
        for suffix, value in state.items():
            out[f"{name}.{suffix}"] = value.float() if suffix == "alpha" else value
    return out


def _peft_state(module: AdapterModule, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    if not isinstance(module, LoRAModule) or module.tucker or module.diff_b is not None:
        what = "Tucker LoRA" if isinstance(module, LoRAModule) and module.tucker else module.algo
        raise AdapterFileError(f"{name}: the diffusers/PEFT format holds plain LoRA/LoCon only, not {what}; "
                               "save it in the kohya format (it loads in diffusers too)")
    out = {"lora_A.weight": state["lora_down.weight"], "lora_B.weight": state["lora_up.weight"]}
    if "dora_scale" in state:
        dora = state["dora_scale"].reshape(-1)  # PEFT's shapes: (out,) for Linear, (1, out, 1, 1) for Conv2d
        out["lora_magnitude_vector"] = dora if module.kind == "linear" else dora.reshape(1, -1, 1, 1)
    return out


def _most_common(values: list, default):
    return collections.Counter(values).most_common(1)[0][0] if values else default


def network_summary(network: Network) -> dict[str, Any]:
    """Rank/alpha/algorithm figures of a Network for metadata (``ss_network_dim`` etc.)."""
    lin = [m for m in network.values() if m.algo in ("lora", "loha", "lokr") and len(m.shape) == 2 or
           (m.algo in ("lora", "loha", "lokr") and len(m.shape) == 4 and m.shape[2:] == (1, 1))]
    conv = [m for m in network.values() if m.algo in ("lora", "loha", "lokr") and len(m.shape) == 4 and m.shape[2:] != (1, 1)]
    algos = collections.Counter(m.algo for m in network.values() if m.algo not in ("full", "norm"))
    algo = _most_common(list(algos.elements()), "lora")
    dora = any(m.dora_scale is not None for m in network.values())
    dim = _most_common([m.rank for m in lin], 0)
    alpha = _most_common([float(m.alpha) for m in lin], 0.0)
    out = dict(algo=algo, dora=dora, dim=dim, alpha=alpha)
    if conv:
        out["conv_dim"] = _most_common([m.rank for m in conv], 0)
        out["conv_alpha"] = _most_common([float(m.alpha) for m in conv], 0.0)
    return out


def build_metadata(network: Network, family: str, *, v_prediction: bool = False, name: str = "",
                   trigger_words: list[str] | None = None, config: dict | None = None,
                   training: dict[str, Any] | None = None, resolution: int | tuple[int, int] | None = None,
                   extra: dict[str, str] | None = None) -> dict[str, str]:
    """The kohya ``ss_*`` set, modelspec keys and sdlora's own, as strings."""
    s = network_summary(network)
    plain = s["algo"] == "lora" and not s["dora"]
    args: dict[str, Any] = {"algo": "locon" if plain and "conv_dim" in s else s["algo"]}
    if "conv_dim" in s:
        args.update(conv_dim=str(s["conv_dim"]), conv_alpha=str(_fmt(s["conv_alpha"])))
    if s["dora"]:
        args["dora_wd"] = "True"
    if network.config is not None:
        cfg = network.config
        args["preset"] = cfg.preset
        if cfg.algo == "lokr":
            args["factor"] = str(cfg.factor)
            if cfg.decompose_both:
                args["decompose_both"] = "True"
        if cfg.tucker:
            args["use_tucker"] = "True"
        if cfg.rs_lora:
            args["rs_lora"] = "True"
    version = BASE_MODEL_VERSION[family] + ("_v" if family == "sd2" and v_prediction else "")
    now = _dt.datetime.now(_dt.timezone.utc)
    meta: dict[str, Any] = {
        "ss_network_module": "networks.lora" if plain else "lycoris.kohya",
        "ss_network_dim": s["dim"],
        "ss_network_alpha": _fmt(s["alpha"]),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": version,
        "ss_v2": str(family == "sd2"),
        "ss_output_name": name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": (MODELSPEC_ARCH[family] if not (family == "sd2" and v_prediction)
                                   else "stable-diffusion-v2-768-v") + ("/lora" if plain else "/lycoris"),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if family == "sdxl" else "diffusers",
        "modelspec.title": name or "sdlora adapter",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "sdlora_version": __version__,
    }
    if resolution:
        w, h = (resolution, resolution) if isinstance(resolution, int) else resolution
        meta["ss_resolution"] = f"({w}, {h})"
        meta["modelspec.resolution"] = f"{w}x{h}"
    if trigger_words:
        meta["sdlora_trigger_words"] = json.dumps(list(trigger_words))
        meta["modelspec.trigger_phrase"] = ", ".join(trigger_words)
    if config is not None:
        meta["sdlora_config"] = json.dumps(config, sort_keys=True, default=str)
    for k, v in (training or {}).items():
        meta[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    meta.update(extra or {})
    return {k: str(v) for k, v in meta.items() if v is not None}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def peft_metadata(network: Network) -> dict[str, str]:
    """diffusers' ``lora_adapter_metadata`` (its LoraConfig per component, flattened as ``<prefix>.<key>``)
    so that diffusers reads each module's real rank and alpha."""
    packed: dict[str, Any] = {}
    for component in network.components():
        mods = [(p, m) for c, p, m in network.items_by_module() if c == component]
        r = _most_common([m.rank for _, m in mods], 4)
        alpha = _most_common([float(m.alpha) for _, m in mods], float(r))
        # PEFT matches target_modules and patterns as dotted suffixes of module names: the path below the CLIP
        # text transformer (no `text_model.`) fits transformers 4 and 5 alike (diffusers strips `text_model.`
        # from the tensor keys for transformers 5, but not from these names).
        full_paths = [keys.normalize_module_path(component, p) for p, _ in mods]
        rank_pattern = {fp: m.rank for fp, (_, m) in zip(full_paths, mods) if m.rank != r}
        alpha_pattern = {fp: float(m.alpha) for fp, (_, m) in zip(full_paths, mods) if float(m.alpha) != alpha}
        cfg = {"r": r, "lora_alpha": alpha, "target_modules": sorted(full_paths), "rank_pattern": rank_pattern,
               "alpha_pattern": alpha_pattern, "use_dora": any(m.dora_scale is not None for _, m in mods),
               "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True}
        prefix = keys.PEFT_PREFIX[component]
        packed.update({f"{prefix}.{k}": v for k, v in cfg.items()})
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}


def save_adapter(network: Network, path: str | Path, family: str, *, unet_config: Any = None,
                 dtype: str | torch.dtype | None = None, dialect: str = "kohya",
                 metadata: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``network`` to ``path`` atomically. kohya/lycoris dialects carry ``metadata`` (see
    ``build_metadata``) plus hashes; the peft dialect carries diffusers' adapter metadata so the real
    alphas survive. Returns the metadata written."""
    if unet_config is None:
        unet_config = _unet_config(network.models)
    tensors = adapter_tensors(network, family, unet_config, dialect)
    if dialect == "peft":
        meta = peft_metadata(network)
        meta.update({k: v for k, v in (metadata or {}).items() if k.startswith(("sdlora_", "modelspec."))})
        return files.write_tensors(path, tensors, meta, dtype=dtype, hashes=False)
    meta = dict(metadata) if metadata is not None else build_metadata(network, family)
    return files.write_tensors(path, tensors, meta, dtype=dtype, hashes=True)
