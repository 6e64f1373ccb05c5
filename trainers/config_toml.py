"""The resolved training config written back: plain data (``to_dict``), a TOML document that
``load_config`` reads to an equal config (``dump_toml``), saved atomically beside the outputs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlora.files.tensors import atomic_write_bytes

if TYPE_CHECKING:
    from sdlora.trainers.config import TrainConfig


def to_dict(cfg: TrainConfig) -> dict:
    """The config as plain data (None values dropped: TOML has no null, and None means 'the default')."""
    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj
    return clean(dataclasses.asdict(cfg))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as a TOML document that ``load_config`` reads back to an equal config."""
    lines: list[str] = []
    for section, body in to_dict(cfg).items():
        tables = {k: v for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines.append(f"[{section}]")
        for k, v in body.items():
            if k not in tables and not (isinstance(v, list) and not v and k == "subsets"):
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
        for k, items in tables.items():
            for item in items:
                lines.append(f"[[{section}.{k}]]")
                lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items())
                lines.append("")
    return "\n".join(lines)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_bytes(path, dump_toml(cfg).encode("utf-8"))
