"""What `sdlora inspect` does once its options (sdlora/commands/inspect.py) are parsed."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from sdlora.adapters import FAMILY_NAMES, AdapterFile
from sdlora.adapters.clients import readers_note
from sdlora.files import tensors as files


_TRAINING_KEYS = {
    "ss_output_name": "name", "ss_num_train_images": "train_images", "ss_num_epochs": "epochs",
    "ss_steps": "steps", "ss_learning_rate": "learning_rate", "ss_unet_lr": "unet_lr",
    "ss_text_encoder_lr": "text_encoder_lr", "ss_resolution": "resolution", "ss_seed": "seed",
    "ss_training_started_at": "started_at", "ss_training_finished_at": "finished_at",
    "ss_training_comment": "comment",
}


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "max": max(values), "median": statistics.median(values),
            "distinct": sorted(set(values))[:16]}


def inspect_file(path: str | Path, *, allow_pickle: bool = False) -> dict:
    """The facts ``sdlora inspect`` prints, as one JSON-able dict (schema in the README)."""
    af = AdapterFile.read(path, allow_pickle=allow_pickle)
    meta = af.metadata
    family = af.detect_family()
    triggers: list[str] = []
    if "sdlora_trigger_words" in meta:
        try:
            triggers = list(json.loads(meta["sdlora_trigger_words"]))
        except ValueError:
            triggers = [meta["sdlora_trigger_words"]]
    elif meta.get("modelspec.trigger_phrase"):
        triggers = [t.strip() for t in meta["modelspec.trigger_phrase"].split(",") if t.strip()]
    data_hash = None
    if Path(path).suffix != ".ckpt" and not allow_pickle:
        data_hash = files.data_section_sha256(Path(path).read_bytes())
    training = {}
    for key, name in _TRAINING_KEYS.items():
        if meta.get(key) not in (None, "", "None"):
            training[name] = meta[key]
    if "ss_tag_frequency" in meta:
        try:
            freq: dict[str, int] = {}
            for tags in json.loads(meta["ss_tag_frequency"]).values():
                for tag, n in tags.items():
                    freq[tag] = freq.get(tag, 0) + int(n)
            training["top_tags"] = [t for t, _ in sorted(freq.items(), key=lambda kv: -kv[1])[:10]]
        except (ValueError, AttributeError):
            pass
    return {
        "path": str(path),
        "file_size": Path(path).stat().st_size,
        "algorithms": dict(af.algorithms()),
        "family": family,
        "family_name": FAMILY_NAMES.get(family) if family else None,
        "base_model_version": meta.get("ss_base_model_version"),
        "modules": len(af.modules),
        "modules_per_component": af.component_counts(),
        "rank": _spread([float(r) for r in af.ranks()]),
        "alpha": _spread(af.alphas()),
        "dtype": af.dtype,
        "unknown_keys": af.unknown_keys,
        "trigger_words": triggers,
        "network_module": meta.get("ss_network_module"),
        "network_args": meta.get("ss_network_args"),
        "training": training,
        "hashes": {
            "sshs_model_hash": meta.get("sshs_model_hash"),
            "sshs_legacy_hash": meta.get("sshs_legacy_hash"),
            "data_sha256": data_hash,
        },
        "metadata_keys": len(meta),
        "readers": readers_note(af),
    }


def _fmt_spread(s: dict | None) -> str:
    if not s:
        return "-"
    if s["min"] == s["max"]:
        return f"{s['min']:g} (all modules)"
    return f"{s['min']:g}..{s['max']:g} (median {s['median']:g}; values {', '.join(f'{v:g}' for v in s['distinct'])})"


def render(info: dict) -> str:
    comps = {"unet": "UNet", "te1": "text encoder 1", "te2": "text encoder 2"}
    lines = [
        f"file         {info['path']} ({info['file_size'] / 1e6:.2f} MB, {info['dtype']})",
        f"algorithms   {', '.join(f'{k} x{v}' for k, v in sorted(info['algorithms'].items()))}",
        f"family       {info['family_name'] or 'unknown'}" + (f" ({info['base_model_version']})" if info['base_model_version'] else ""),
        f"modules      {info['modules']}: " + ", ".join(f"{comps.get(k, k)} {v}" for k, v in sorted(info['modules_per_component'].items())),
        f"rank         {_fmt_spread(info['rank'])}",
        f"alpha        {_fmt_spread(info['alpha'])}",
    ]
    if info["trigger_words"]:
        lines.append(f"trigger      {', '.join(info['trigger_words'])}")
    if info["training"]:
        lines.append("training     " + "; ".join(f"{k} {v}" for k, v in info["training"].items()))
    h = info["hashes"]
    if h["sshs_model_hash"]:
        lines.append(f"hash         {h['sshs_model_hash']} (legacy {h['sshs_legacy_hash']})")
    elif h["data_sha256"]:
        lines.append(f"hash         {h['data_sha256']} (computed; the file stores none)")
    lines += [f"clients      {line}" for line in info["readers"]]
    if info["unknown_keys"]:
        lines.append(f"unknown keys {len(info['unknown_keys'])}: {', '.join(info['unknown_keys'][:5])}")
    return "\n".join(lines)


def run(args) -> int:
    try:
        info = inspect_file(args.file, allow_pickle=args.allow_pickle)
    except files.PickleRefused as exc:
        raise exc.with_hint("pass --allow-pickle to read its tensors with torch.load(weights_only=True)") from None
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
