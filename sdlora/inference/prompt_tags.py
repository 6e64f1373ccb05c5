"""A1111's adapter syntax in prompts: ``<lora:name:0.8>``, resolved against an adapter folder.

A tag is ``<lora:NAME[:TE[:UNET]][:te=X][:unet=X][:lbw=W]>`` (``<lyco:...>`` too), as A1111 reads it: the
first number is the text-encoder strength and also the UNet strength unless a second number follows;
``lbw=`` gives block weights (a preset or a vector, see ``sdlora.blocks``), as the LoRA Block Weight
extension reads it. Tags are removed from the prompt the model sees. NAME is a file in the adapter folder:
``NAME``, ``NAME.safetensors``, or any ``NAME.*`` adapter file below it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import AdapterFileError, ConfigError

TAG = re.compile(r"<(?:lora|lyco):([^>]+)>")
ADAPTER_SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass
class Tag:
    """One ``<lora:...>`` tag of a prompt."""

    name: str
    te_strength: float
    strength: float  # UNet
    block_weights: str | None
    text: str  # the tag as written


def parse_prompt(prompt: str) -> tuple[str, list[Tag]]:
    """(the prompt without its tags, the tags in order). Raises ConfigError for a malformed tag."""
    tags = [_parse(m.group(1), m.group(0)) for m in TAG.finditer(prompt)]
    clean = re.sub(r"[ \t]{2,}", " ", TAG.sub("", prompt)).strip()
    return clean, tags


def _parse(inner: str, text: str) -> Tag:
    items = [s.strip() for s in inner.split(":")]
    if not items[0]:
        raise ConfigError(f"{text}: the tag names no adapter; write <lora:NAME:STRENGTH>")
    positional = [s for s in items[1:] if "=" not in s]
    named = dict(s.split("=", 1) for s in items[1:] if "=" in s)
    try:
        te = float(positional[0]) if positional else 1.0
        te = float(named.get("te", te))
        unet = float(positional[1]) if len(positional) > 1 else te
        unet = float(named.get("unet", unet))
    except ValueError:
        raise ConfigError(f"{text}: strengths must be numbers, e.g. <lora:{items[0]}:0.8>") from None
    if not (math.isfinite(te) and math.isfinite(unet)):
        raise ConfigError(f"{text}: strengths must be finite numbers (not nan or inf), e.g. <lora:{items[0]}:0.8>")
    return Tag(items[0], te, unet, named.get("lbw") or named.get("w"), text)


def format_tag(name: str, strength: float, te_strength: float, block_weights: str | None = None) -> str:
    """The A1111 tag for an adapter: ``<lora:name:S>`` or ``<lora:name:TE:UNET>``, plus ``:lbw=...``."""
    body = f"{name}:{te_strength:g}" if te_strength == strength else f"{name}:{te_strength:g}:{strength:g}"
    if block_weights:
        body += f":lbw={block_weights}"
    return f"<lora:{body}>"


def find_adapter_file(name: str, lora_dir: str | Path | None) -> Path:
    """The adapter file a tag names, inside ``lora_dir`` only: NAME may hold sub-folders (``styles/ink``)
    but no ``..`` and no absolute path, and a candidate whose resolved path (symlinks followed) leaves the
    folder is not used; nothing outside the folder is opened. Raises AdapterFileError saying where it looked."""
    if lora_dir is None:
        raise AdapterFileError(f"the prompt names <lora:{name}> but no adapter folder was given; pass "
                               "--lora-dir DIR (lora_dir= in Python)")
    folder = Path(lora_dir).expanduser()
    if not folder.is_dir():
        raise AdapterFileError(f"--lora-dir {folder}: no such folder")
    relative = Path(name.replace("\\", "/"))
    if relative.is_absolute() or relative.drive or ".." in relative.parts:
        raise AdapterFileError(f"<lora:{name}>: a tag names an adapter inside --lora-dir ({folder}), by its "
                               "name or a sub-folder path without '..'; put the file in that folder")
    root = folder.resolve()
    for candidate in (folder / relative, folder / f"{relative}.safetensors"):
        if candidate.is_file() and _inside(candidate, root):
            return candidate
    found = sorted(p for p in adapter_files(folder) if p.stem == relative.name)
    if found:
        return found[0]
    known = sorted(p.stem for p in adapter_files(folder))
    shown = ", ".join(known[:8]) + (f" and {len(known) - 8} more" if len(known) > 8 else "")
    raise AdapterFileError(f"<lora:{name}> is not found: no {name}.safetensors in {folder} "
                           f"(it holds: {shown or 'no adapter files'}). Check the name, or pass --lora-dir with "
                           "the folder that holds it (links that lead out of it are not followed)")


def _inside(path: Path, root: Path) -> bool:
    """True when ``path``, symlinks resolved, lies in ``root`` (itself resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def adapter_files(folder: str | Path, suffixes: tuple[str, ...] = ADAPTER_SUFFIXES) -> list[Path]:
    """Adapter files below ``folder`` whose resolved paths (symlinks followed) stay inside it."""
    root = Path(folder).expanduser().resolve()
    return [p for p in Path(folder).expanduser().rglob("*")
            if p.suffix in suffixes and p.is_file() and _inside(p, root)]
