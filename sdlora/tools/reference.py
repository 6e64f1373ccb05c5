"""The reference model adapter names resolve to, and the names tools share (Key, ModelLike).

Every tool works per module, keyed by ``Key = (component, canonical path)`` (see ``keys``), so files that
name the same layer in different dialects (kohya SGM / kohya diffusers / LyCORIS / PEFT) line up.

The reference is what names and shapes come from:
- ``--model`` (a BaseModel, a model folder, or {"unet": ..., "te1": ...}): exact shapes and, because it
  holds weights, DoRA can be folded (its change depends on W);
- otherwise the family's real-size model built on the meta device from the configs shipped in
  sdlora/assets (no weights, no memory): every real SD1/SD2/SDXL file resolves against it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn

from sdlora import keys
from sdlora.adapters import FAMILY_NAMES, adaptable_paths
from sdlora.models import SHIPPED, build_skeletons, detect_family, open_model, read_config_folder
from sdlora.models.configs import config_dir
from sdlora.models.families import PIPELINE_NAMES
from sdlora.errors import AdapterFileError, ModelError

Tensor = torch.Tensor
Key = tuple[str, str]  # (component, canonical module path)
ModelLike = Union[str, Path, Any, dict, None]  # folder / BaseModel / {"unet": ..., "te1": ...} / None


@dataclass
class Reference:
    """The layers adapter names resolve to. ``has_weights`` is False for the shipped meta skeleton."""

    family: str
    models: dict[str, nn.Module]
    has_weights: bool
    source: str
    _table: dict[str, Key] | None = field(default=None, repr=False)

    @property
    def unet_config(self) -> Any:
        return self.models["unet"].config

    @property
    def table(self) -> dict[str, Key]:
        if self._table is None:
            paths = {c: adaptable_paths(m) for c, m in self.models.items()}
            self._table = keys.alias_table(paths, self.family, self.unet_config)
        return self._table

    def raw_path(self, key: Key) -> str:
        """The named_modules path of ``key`` in this model (text encoders may hold a `text_model.` level)."""
        component, path = key
        root = self.models[component]
        try:
            root.get_submodule(path)
            return path
        except AttributeError:
            return f"text_model.{path}"

    def layer(self, key: Key) -> nn.Module:
        return self.models[key[0]].get_submodule(self.raw_path(key))


@functools.lru_cache(maxsize=3)
def shipped_skeleton(family: str) -> dict[str, nn.Module]:
    """The real-size UNet and text encoders of ``family`` on the meta device (no weights), from the
    configs shipped in sdlora/assets (``models.build_skeletons``)."""
    skeletons = build_skeletons(family, read_config_folder(config_dir(SHIPPED[family])))
    return {c: skeletons[n] for c, n in PIPELINE_NAMES.items() if n in skeletons}


def open_reference(family: str | None, model: ModelLike = None) -> Reference:
    """The reference for ``family``: ``model`` when given (its family must match), else the shipped skeleton."""
    if model is None:
        if family is None:
            raise AdapterFileError("cannot tell which model family (SD1, SD2, SDXL) the adapter is for; "
                                   "pass --family sd1|sd2|sdxl or --model BASE")
        return Reference(family, shipped_skeleton(family), False, f"the shipped {FAMILY_NAMES[family]} config")
    if isinstance(model, dict):
        models = {c: m for c, m in model.items() if m is not None}
        fam, source = family, "given modules"
        if fam is None:
            fam = detect_family(models["unet"].config, models.get("te2"))
    else:
        base = model if hasattr(model, "components") else open_model(model)
        models, fam, source = base.components(), base.family, str(getattr(base, "source", "") or model)
        if family is not None and family != fam:
            raise ModelError(f"the adapter is for {FAMILY_NAMES[family]} but {source} is an "
                             f"{FAMILY_NAMES[fam]} model; pass the base model the adapter was made for")
    has_weights = all(p.device.type != "meta" for m in models.values() for p in m.parameters())
    return Reference(fam, models, has_weights, source)

