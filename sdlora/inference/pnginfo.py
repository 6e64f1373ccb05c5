"""A1111's ``parameters`` text read back: what ``sdlora generate --from-png`` re-renders.

The text A1111 (and sdlora) writes into a PNG:

    <prompt, one or more lines>
    Negative prompt: <negative, one or more lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, ...

The last line is ``key: value`` fields separated by commas; a value in double quotes may hold commas
(``Lora hashes: "ink: 1a2b3c4d5e6f, style: 0f9e8d7c6b5a"``). ``read_settings`` turns the fields sdlora
applies into generate() arguments and lists every other field in ``unknown`` (never silently dropped).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sdlora.errors import AdapterFileError, ConfigError
from sdlora.files import tensors as files
from sdlora.inference import prompt_tags, samplers

_FIELD = re.compile(r'\s*([\w][\w \-/+.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
# fields that describe the image without changing how it is rendered, or that sdlora reads itself
_APPLIED = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip", "Lora hashes",
            "Denoising strength", "Prompt syntax", "TI hashes"}
_INFORMATIVE = {"Model hash", "Model", "Version", "VAE", "VAE hash"}


@dataclass
class Settings:
    """What a PNG's parameters say, as ``generate`` arguments, plus what sdlora does not apply."""

    prompt: str
    negative_prompt: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # steps, sampler, cfg, seed, width, height, clip_skip, ...
    lora_hashes: dict[str, str] = field(default_factory=dict)  # adapter name -> short hash (12 hex)
    embedding_hashes: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # every field as written
    unknown: list[str] = field(default_factory=list)  # fields sdlora does not apply


def split_fields(line: str) -> dict[str, str]:
    """{key: value} of a parameters line (quotes removed from quoted values)."""
    out: dict[str, str] = {}
    for m in _FIELD.finditer(line):
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"')
        out[m.group(1).strip()] = value
    return out


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, fields) of an A1111 parameters text."""
    lines = text.strip("\n").split("\n")
    fields: dict[str, str] = {}
    if lines and len(_FIELD.findall(lines[-1])) >= 3 and re.match(r"\s*Steps:", lines[-1]):
        fields = split_fields(lines.pop())
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), fields


def _pairs(text: str) -> dict[str, str]:
    """'a: 123, b: 456' -> {"a": "123", "b": "456"}."""
    out = {}
    for part in text.split(","):
        name, _, value = part.rpartition(":")
        if name.strip():
            out[name.strip()] = value.strip()
    return out


def _number(fields: dict[str, str], key: str, kind: type) -> Any:
    try:
        return kind(fields[key])
    except ValueError:
        raise ConfigError(f"the PNG's parameters say {key}: {fields[key]!r}, which is not a number") from None


def settings_from_text(text: str) -> Settings:
    """``Settings`` from a parameters text (ConfigError for a field sdlora applies that it cannot read)."""
    prompt, negative, fields = parse_parameters(text)
    s = Settings(prompt, negative, fields=fields)
    v = s.values
    if "Steps" in fields:
        v["steps"] = _number(fields, "Steps", int)
    if "CFG scale" in fields:
        v["cfg"] = _number(fields, "CFG scale", float)
    if "Seed" in fields:
        v["seed"] = _number(fields, "Seed", int)
    if "Clip skip" in fields:
        v["clip_skip"] = _number(fields, "Clip skip", int)
    if "Denoising strength" in fields:
        v["denoise"] = _number(fields, "Denoising strength", float)
    if "Size" in fields:
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", fields["Size"])
        if not m:
            raise ConfigError(f"the PNG's parameters say Size: {fields['Size']!r}; expected WIDTHxHEIGHT")
        v["width"], v["height"] = int(m.group(1)), int(m.group(2))
    if "Sampler" in fields:
        name = fields["Sampler"]
        if fields.get("Schedule type", "").lower() == "karras" and "karras" not in name.lower():
            name += " Karras"
        samplers.label(name)  # ConfigError for a sampler sdlora does not have
        v["sampler"] = samplers.normalize(name)
    if fields.get("Prompt syntax") == "plain":
        v["prompt_syntax"] = False
    s.lora_hashes = _pairs(fields.get("Lora hashes", ""))
    s.embedding_hashes = _pairs(fields.get("TI hashes", ""))
    s.unknown = [f"{k}: {val}" for k, val in fields.items() if k not in _APPLIED | _INFORMATIVE]
    if fields.get("Schedule type") not in (None, "", "Karras", "Automatic"):
        s.unknown.append(f"Schedule type: {fields['Schedule type']}")
    return s


def read_settings(path: str | Path) -> Settings:
    """``Settings`` from a PNG's ``parameters`` text; ConfigError when it has none or is not an image."""
    path = Path(path).expanduser()
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--from-png {path}: cannot be read as an image ({exc})") from None
    if not text:
        raise ConfigError(f"--from-png {path}: the image holds no A1111 'parameters' text (it was not made by "
                          "A1111 or sdlora, or the text was stripped)")
    return settings_from_text(text)


def locate_adapters(names: list[str], hashes: dict[str, str], lora_dir: str | Path | None
                    ) -> tuple[dict[str, Path], list[str]]:
    """{adapter name: file} for the adapters a PNG names, and notes. A file is found in ``lora_dir`` (and its
    subfolders) by the short hash A1111 writes in ``Lora hashes`` (the first 12 hex digits of the sha256 of
    the file's tensor data, A1111's AutoV3), else by name. Raises AdapterFileError naming every adapter
    that is not there."""
    folder = Path(lora_dir).expanduser() if lora_dir else None
    if names and (folder is None or not folder.is_dir()):
        raise AdapterFileError(f"the PNG uses {', '.join(names)}; pass --lora-dir DIR with the folder that holds "
                               "them" + (f" ({folder} is not a folder)" if folder else ""))
    by_hash: dict[str, Path] | None = None
    found: dict[str, Path] = {}
    notes: list[str] = []
    missing: list[str] = []
    for name in names:
        want = hashes.get(name, "").lower()
        try:
            path: Path | None = prompt_tags.find_adapter_file(name, folder)
        except AdapterFileError:
            path = None
        if want and (path is None or files.short_hash(path) != want):
            if by_hash is None:
                by_hash = {files.short_hash(p): p for p in sorted(prompt_tags.adapter_files(folder, (".safetensors",)))}
            if want in by_hash:
                if path is not None or by_hash[want].stem != name:
                    notes.append(f"{name}: found by its hash {want} as {by_hash[want].name}")
                path = by_hash[want]
            elif path is not None:
                notes.append(f"{name}: {path.name} has hash {files.short_hash(path)}, the PNG says {want}; "
                             "using it anyway (the image may differ)")
        if path is None:
            missing.append(f"{name}" + (f" (hash {want})" if want else ""))
        else:
            found[name] = path
    if missing:
        raise AdapterFileError(f"the PNG uses adapters that are not in {folder}: {', '.join(missing)}; put them "
                               "there (any file name: they are found by hash) or pass another --lora-dir")
    return found, notes
