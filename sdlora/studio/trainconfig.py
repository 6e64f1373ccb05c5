"""The Train page's data: the config schema from the trainer's typed dataclasses, and the form <-> config
conversions. Validation is the trainer's own (``config_from_dict``, what ``sdlora train`` runs), so an
invalid value gets the same sentence; the studio only maps paths (relative to the root) and names the field.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from sdlora.errors import ConfigError
from sdlora.studio.paths import inside, model_path, relative
from sdlora.trainers.config import TrainConfig, config_from_dict, dump_toml, load_config, to_dict
from sdlora.files.tensors import atomic_write_bytes

# (section, key): the config's path fields, as the form shows them (relative to the root).
PATH_FIELDS = [("model", "path"), ("model", "tokenizer"), ("dataset", "path"), ("dataset", "reg_path"),
               ("training", "cache_dir"), ("sample", "prompts"), ("output", "dir")]
_FIELD = re.compile(r"^(?:([a-z_]+(?:\.[a-z_0-9]+|\[\d+\])+)|\[([a-z_]+)\])")


def field_of(message: str) -> str | None:
    """The config key a ConfigError sentence starts with (``training.max_steps``), or the section."""
    m = _FIELD.match(message)
    return (m.group(1) or m.group(2)) if m else None


def _type_of(tp: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [_type_of(a) for a in args if a is not type(None)]
        out = dict(kinds[0]) if len(kinds) == 1 else {"type": "|".join(k["type"] for k in kinds)}
        out["optional"] = type(None) in args
        return out
    if origin is list:
        inner = args[0]
        return {"type": "tables" if dataclasses.is_dataclass(inner) else f"list[{_type_of(inner)['type']}]"}
    return {"type": {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, str(tp))}


def schema() -> dict[str, list[dict[str, Any]]]:
    """Every section's fields: name, type, optional, default, choices, min, max, doc, path."""
    out: dict[str, list[dict[str, Any]]] = {}
    for section in dataclasses.fields(TrainConfig):
        cls = typing.get_type_hints(TrainConfig)[section.name]
        hints = typing.get_type_hints(cls)
        defaults = to_dict(TrainConfig())[section.name]
        fields = []
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            entry = {"name": f.name, **_type_of(hints[f.name]), "default": defaults.get(f.name),
                     "doc": meta.get("doc", ""), "path": (section.name, f.name) in PATH_FIELDS}
            entry.setdefault("optional", False)
            if meta.get("choices") is not None:
                entry["choices"] = [c for c in meta["choices"] if c is not None]
            for bound in ("min", "max"):
                if meta.get(bound) is not None:
                    entry[bound] = meta[bound]
            fields.append(entry)
        out[section.name] = fields
    return out


def from_form(root: Path, form: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from the form's data (paths relative to the root). Raises ConfigError with
    the trainer's sentence, or PathRefused for a path that leaves the root."""
    if not isinstance(form, dict):
        raise ConfigError("config must be a table of sections, e.g. {\"training\": {\"max_steps\": 30}}")
    raw = copy.deepcopy(form)
    for section, key in PATH_FIELDS:
        body = raw.get(section)
        if not isinstance(body, dict) or not isinstance(body.get(key), str) or not body[key]:
            continue
        where = f"{section}.{key}"
        full = model_path(root, body[key], where) if where == "model.path" else inside(root, body[key], field=where)
        body[key] = str(full)
    for i, sub in enumerate((raw.get("dataset") or {}).get("subsets") or []):
        if isinstance(sub, dict) and isinstance(sub.get("path"), str) and sub["path"]:
            sub["path"] = str(inside(root, sub["path"], field=f"dataset.subsets[{i}].path"))
    return config_from_dict(raw, base_dir=root)


def to_form(root: Path, cfg: TrainConfig) -> dict[str, Any]:
    """The config as the form shows it: every key, paths relative to the root (``default`` for the
    embedded model)."""
    data = to_dict(cfg)
    for section, key in PATH_FIELDS:
        if data[section].get(key):
            data[section][key] = relative(root, data[section][key])
    for sub in data["dataset"].get("subsets", []):
        if sub.get("path"):
            sub["path"] = relative(root, sub["path"])
    return data


def _relative_to(folder: Path, value: str) -> str:
    if not value:
        return value
    return os.path.relpath(value, folder) if Path(value).is_absolute() else value


def write_toml(cfg: TrainConfig, target: Path) -> str:
    """Write ``cfg`` to ``target`` with paths relative to its folder, so ``sdlora train target`` runs the
    same config; checked by reading it back. Returns the TOML text."""
    folder = target.parent
    out = copy.deepcopy(cfg)
    for section, key in PATH_FIELDS:
        body = getattr(out, section)
        setattr(body, key, _relative_to(folder, getattr(body, key)))
    for sub in out.dataset.subsets:
        sub.path = _relative_to(folder, sub.path)
    text = dump_toml(out)
    again = config_from_dict(tomllib.loads(text), base_dir=folder)
    if to_dict(again) != to_dict(cfg):  # a bug, never a user error
        raise RuntimeError("the TOML written for this config does not read back to the same config")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, text.encode("utf-8"))
    return text


def read_preset(root: Path, path: Path) -> dict[str, Any]:
    """A preset TOML as form data (validated by ``load_config``, as ``sdlora train`` reads it)."""
    return to_form(root, load_config(path))
