"""Adapter file metadata: the kohya ``ss_*`` set, modelspec keys and sdlora's own (``build_metadata``), and
diffusers' ``lora_adapter_metadata`` for PEFT files (``peft_metadata``)."""
from __future__ import annotations

import collections
import datetime as _dt
import json
from typing import Any

from sdlora import __version__, keys
from sdlora.models.families import BASE_MODEL_VERSION, modelspec_architecture
from sdlora.networks import Network
from sdlora.adapters.clients import KOHYA_MODULE, LYCORIS_MODULE, kohya_cannot_load


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
    kohya = kohya_cannot_load(network) is None  # else A1111/kohya must route the file to the LyCORIS loader
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
        "ss_network_module": KOHYA_MODULE if kohya else LYCORIS_MODULE,
        "ss_network_dim": s["dim"],
        "ss_network_alpha": _fmt(s["alpha"]),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": version,
        "ss_v2": str(family == "sd2"),
        "ss_output_name": name or None,  # A1111 takes "" as the LoRA's name (<lora::1>): leave it out
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(family, v_prediction) + ("/lora" if plain else "/lycoris"),
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

