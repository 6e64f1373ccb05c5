"""Reading adapter files for the tools: grouped per module, resolved against a Reference (``ResolvedFile``),
with the naming dialect each file was written in."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlora import keys
from sdlora.adapters import FAMILY_NAMES, AdapterFile
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.tools.reference import Key, ModelLike, Reference, Tensor, open_reference

UNET_NAMES = ("sgm", "diffusers")


@dataclass
class ResolvedFile:
    """One adapter file resolved against a reference: its modules keyed by Key, with their file names."""

    path: str
    file: AdapterFile
    modules: dict[Key, dict[str, Tensor]]  # {canonical suffix: tensor} (PEFT: alpha from the metadata)
    names: dict[Key, str]  # module name as written in the file
    dialect: str  # "kohya" | "lycoris" | "peft"
    unet_names: str | None  # "sgm" | "diffusers" for kohya UNet names, else None
    ref: Reference  # what the names resolved against

    @property
    def dtype(self) -> torch.dtype:
        counts = collections.Counter(t.dtype for m in self.modules.values() for s, t in m.items()
                                     if s != "alpha" and t.is_floating_point())
        return counts.most_common(1)[0][0] if counts else torch.float32


def read_file(path: str | Path) -> AdapterFile:
    """An adapter file grouped per module; refuses keys of unknown meaning (a tool would drop them)."""
    af = AdapterFile.read(path)
    if af.unknown_keys:
        shown = ", ".join(af.unknown_keys[:5])
        raise AdapterFileError(f"{path}: {len(af.unknown_keys)} keys are not adapter tensors sdlora knows "
                               f"(e.g. {shown}); a tool would lose them, so it refuses the file")
    return af


def file_family(af: AdapterFile, family: str | None = None) -> str | None:
    """The file's family (from names, shapes, metadata), checked against ``family`` when given."""
    detected = af.detect_family()
    if family is not None and family not in FAMILY_NAMES:
        raise ConfigError(f"unknown family {family!r}; use one of {', '.join(FAMILY_NAMES)}")
    if detected is not None and family is not None and detected != family:
        raise AdapterFileError(f"{af.path}: this is an {FAMILY_NAMES[detected]} adapter, not "
                               f"{FAMILY_NAMES[family]}; drop --family or pass the right one")
    return detected or family


def resolve_file(af: AdapterFile, ref: Reference) -> ResolvedFile:
    """Map every module name of ``af`` to a Key of ``ref``; refuses names that match no layer."""
    modules: dict[Key, dict[str, Tensor]] = {}
    names: dict[Key, str] = {}
    missing = []
    for name, tensors in af.modules.items():
        key = ref.table.get(name)
        if key is None:
            missing.append(name)
            continue
        if key in modules:
            raise AdapterFileError(f"{af.path}: {names[key]} and {name} name the same layer; the file is "
                                   "ambiguous — keep one of them")
        modules[key], names[key] = dict(tensors), name
    if missing:
        hint = ("pass --model with the base model the adapter was made for" if not ref.has_weights
                else "it was made for another model")
        raise AdapterFileError(f"{af.path}: {len(missing)} modules match no layer of the {FAMILY_NAMES[ref.family]} "
                               f"reference ({ref.source}), e.g. {', '.join(missing[:3])}; {hint}")
    dialects = collections.Counter(dialect_of(n) for n in names.values())
    dialect = dialects.most_common(1)[0][0] if dialects else "kohya"
    return ResolvedFile(af.path, af, modules, names, dialect, _unet_style(names, ref), ref)


def read_source(path: str | Path, family: str | None = None, model: ModelLike = None,
                ref: Reference | None = None) -> ResolvedFile:
    """Read and resolve one file (a reference is opened for its family unless given)."""
    af = read_file(path)
    if ref is None:
        ref = open_reference(file_family(af, family), model)
    elif (fam := file_family(af, family)) is not None and fam != ref.family:
        raise AdapterFileError(f"{path}: this is an {FAMILY_NAMES[fam]} adapter; the others are "
                               f"{FAMILY_NAMES[ref.family]} — inputs must be of one family")
    return resolve_file(af, ref)


def dialect_of(name: str) -> str:
    """The naming dialect of a module name as written (prefix test only; keys.py does the real parsing)."""
    return keys.name_dialect(name)


def _unet_style(names: dict[Key, str], ref: Reference) -> str | None:
    votes = collections.Counter()
    for key, name in names.items():
        if key[0] == "unet" and dialect_of(name) == "kohya":
            for style in UNET_NAMES:
                try:
                    if name == kohya_unet_name(key[1], style, ref.unet_config):
                        votes[style] += 1
                except ValueError:
                    pass
    return votes.most_common(1)[0][0] if votes else None



def kohya_unet_name(path: str, style: str, unet_config: Any) -> str:
    """kohya name of a UNet module in SGM (`lora_unet_input_blocks_…`) or diffusers (`lora_unet_down_blocks_…`)
    form, whatever the family (keys.kohya_name writes SGM for the SDXL family, diffusers for SD1/SD2)."""
    return keys.kohya_name("unet", path, "sdxl" if style == "sgm" else "sd1", unet_config)

