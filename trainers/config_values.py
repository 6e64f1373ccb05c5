"""Typed config values: a raw TOML value checked against a dataclass field's annotation and range, a
section built from a table (unknown keys named, with the nearest key), and ``--set section.key=value``
overrides parsed and applied to the raw document."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from typing import Any

from sdlora.errors import ConfigError


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "empty"}.get(tp, getattr(tp, "__name__", str(tp)))


def show_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (str, list, dict)) else repr(value)


def convert_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``; raises ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_value(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key} = {show_value(value)} is not allowed: it must be {type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {show_value(value)} is not allowed: it must be {type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [convert_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {show_value(value)} is not allowed: it must be a table")
        return build_section(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} = {show_value(value)} is not allowed: it must be {type_name(tp)}")


def check_range(value: Any, meta: dict, key: str) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join(show_value(c) for c in choices if c is not None)
        raise ConfigError(f"{key} = {show_value(value)} is not allowed: use one of {shown}")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and v < lo:
            raise ConfigError(f"{key} = {show_value(value)} is out of range: it must be at least {lo:g}")
        if hi is not None and v > hi:
            raise ConfigError(f"{key} = {show_value(value)} is out of range: it must be at most {hi:g}")


def build_section(cls: type, raw: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{where}.{key} is not a config key (the keys of [{where}] are: "
                              f"{', '.join(fields)}){hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{where}.{name}"
        value = convert_value(raw[name], hints[name], key)
        check_range(value, dict(f.metadata), key)
        values[name] = value
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: write section.key=value, e.g. --set training.max_steps=200")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(raw: dict, parts: list[str], value: Any) -> None:
    """Set ``value`` at the dotted path ``parts`` of the raw TOML dict (list items by index)."""
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i])} has {len(node)} entries; "
                                  f"{part!r} is not one of their indices")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is a value, not a table")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {'.'.join(parts)}: no entry {last!r} in {'.'.join(parts[:-1])}")
        node[int(last)] = value
    else:
        node[last] = value
