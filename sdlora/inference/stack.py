"""An adapter stack on a base model: add, re-weight, remove, fuse and unfuse adapters.

    model = open_model("base.safetensors", tokenizer="tok/")
    stack = AdapterStack(model)
    stack.add("style.safetensors", strength=0.8)                  # name "style"
    stack.add("face.safetensors", strength=0.6, te_strength=0.3, block_weights="OUTD")
    stack.set_strength("style", 0.5)
    stack.fuse()     # fold every active adapter into the weights: generation runs at base speed
    stack.unfuse()   # the base weights again, bit for bit

Each adapter module's strength is its adapter's strength (``te_strength`` for text-encoder modules) times
its block weight (``sdlora.blocks``).

How several adapters combine on one layer (as A1111 does): each adapter's change is computed against the
base weight and the changes add up, W' = W + Σᵢ (Wᵢ'(W) − W); for LoRA/LoHa/LoKr/full that is
W + Σᵢ mᵢ·γᵢ·ΔWᵢ, for DoRA the change of its decomposed weight. The result does not depend on the order.

Bypass mode (the default) leaves the weights untouched: the stack puts one forward hook on every layer an
active adapter touches, which adds the contributions of the active adapters on that layer. Each layer keeps
the list of its active modules ready (rebuilt by add, remove, strength changes, fuse and unfuse, which own
the modules' ``enabled`` flags), and a layer with none, or any layer while fused, has no hook at all:
adapters at strength 0 and fused adapters cost nothing per call. Fused mode keeps ONE backup of every touched
base layer and writes ``fold_weight(W, active modules)`` into it; ``unfuse`` copies the backups back, bit for
bit. Changing a strength touches only that adapter's modules (and, when fused, refolds only the layers they
sit on): O(its modules), independent of how many adapters are loaded. Both modes give the same outputs
within fp32 tolerance; ``fold_weight`` is also what ``sdlora.bake`` uses, so a baked checkpoint holds exactly
the fused weights.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sdlora.inference import blocks
from sdlora.files import tensors as files
from sdlora.adapters import AdapterFile, LoadReport, load_adapter
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.models import BaseModel
from sdlora.networks import AdapterModule, Network
from sdlora.networks.fold import fold_bias, fold_weight, is_additive

Tensor = torch.Tensor
_KEEP: Any = object()  # "leave unchanged" for optional arguments of set_strength


@dataclass
class AdapterSpec:
    """An adapter to apply: its file, strength, text-encoder strength (None: same) and block weights."""

    path: str | Path
    strength: float = 1.0
    te_strength: float | None = None
    block_weights: str | Sequence[float] | None = None


def parse_adapter_arg(text: str) -> AdapterSpec:
    """``FILE[:STRENGTH[:TE_STRENGTH]][:lbw=WEIGHTS]`` (the CLI's ``--lora``) -> AdapterSpec. Fields are
    taken from the right, so a path may itself hold colons. Raises ConfigError for a bad number."""
    parts = text.split(":")
    options: list[str] = []
    while len(parts) > 1 and len(options) < 3 and (_is_number(parts[-1]) or "=" in parts[-1]):
        options.insert(0, parts.pop())
    path = ":".join(parts)
    if not path:
        raise ConfigError(f"--lora {text!r}: give FILE[:STRENGTH[:TE_STRENGTH]][:lbw=WEIGHTS]")
    numbers = [float(o) for o in options if "=" not in o]
    named = dict(o.split("=", 1) for o in options if "=" in o)
    unknown = set(named) - {"lbw", "te"}
    if unknown or len(numbers) > 2:
        raise ConfigError(f"--lora {text!r}: give FILE[:STRENGTH[:TE_STRENGTH]][:lbw=WEIGHTS]")
    strength = blocks.finite_strength(numbers[0], f"--lora {text!r}: the strength") if numbers else 1.0
    te = numbers[1] if len(numbers) > 1 else named.get("te")
    if te is not None:
        te = blocks.finite_strength(te, f"--lora {text!r}: the text-encoder strength")
    return AdapterSpec(path, strength, te, named.get("lbw"))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def module_multiplier(component: str, strength: float, te_strength: float | None, block_weight: float) -> float:
    """A module's strength: the adapter's strength (``te_strength`` for text-encoder modules, None: the
    same) times the module's block weight."""
    base = strength if component == "unet" or te_strength is None else te_strength
    return base * block_weight


def block_factors(network: Network, block_weights: dict[str, float] | None, unet_config: Any
                  ) -> list[tuple[AdapterModule, str, float]]:
    """(module, component, block weight) for every module of ``network`` (weight 1 without block weights)."""
    out = []
    for component, path, module in network.items_by_module():
        w = 1.0 if block_weights is None else blocks.module_weight(block_weights, component, path, unet_config)
        out.append((module, component, w))
    return out


@dataclass
class Adapter:
    """One adapter in a stack: its file, network and strengths."""

    name: str
    path: str
    network: Network
    report: LoadReport
    strength: float = 1.0
    te_strength: float | None = None  # None: the same as strength
    block_weights: dict[str, float] | None = None
    block_spec: str | None = None  # as the user gave it (preset name or vector)
    short_hash: str = ""
    _factors: list[tuple[AdapterModule, str, float]] = field(default_factory=list, repr=False)

    @property
    def effective_te_strength(self) -> float:
        return self.strength if self.te_strength is None else self.te_strength

    def modules(self) -> list[AdapterModule]:
        return list(self.network.values())


@dataclass
class _Layer:
    layer: nn.Module
    modules: list[tuple[str, AdapterModule]] = field(default_factory=list)  # (adapter name, module), in order
    backup: dict[str, Tensor] | None = None
    live: tuple[tuple[AdapterModule, bool], ...] = ()  # (module, additive) of the enabled modules, in order
    handle: Any = None  # the bypass forward hook: registered while ``live`` is not empty and the stack not fused


def _bypass_hook(state: _Layer):
    """The forward hook of one layer: base output plus the contribution of every active adapter on it."""

    def hook(layer: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x, y = args[0], out
        for m, additive in state.live:
            y = m.bypass(x, y) if additive else y + (m.bypass(x, out) - out)
        return y

    return hook


class AdapterStack:
    """Adapters on one ``BaseModel`` (see the module docstring). ``model.stack`` points back here, so
    ``sdlora.generate`` can name the adapters in the PNG parameters."""

    def __init__(self, model: BaseModel, *, strict: bool = True):
        if getattr(model, "stack", None) is not None and len(model.stack):
            raise AdapterFileError("this model already has an adapter stack with adapters; use model.stack, or "
                                   "call model.stack.clear() first")
        self.model = model
        self.strict = strict
        self.adapters: dict[str, Adapter] = {}
        self.fused = False
        self._layers: dict[int, _Layer] = {}
        model.stack = self

    # -------------------------------------------------------------- contents
    def __len__(self) -> int:
        return len(self.adapters)

    def __contains__(self, name: str) -> bool:
        return name in self.adapters

    def __iter__(self) -> Iterator[Adapter]:
        return iter(list(self.adapters.values()))

    def __getitem__(self, name: str) -> Adapter:
        try:
            return self.adapters[name]
        except KeyError:
            raise AdapterFileError(f"no adapter named {name!r} in the stack (it holds: "
                                   f"{', '.join(self.adapters) or 'nothing'})") from None

    def active(self) -> list[Adapter]:
        """Adapters with a non-zero strength on any module."""
        return [a for a in self.adapters.values() if any(m.enabled for m, _, _ in a._factors)]

    # ------------------------------------------------------------------ add
    def add(self, source: str | Path | AdapterFile, *, name: str | None = None, strength: float = 1.0,
            te_strength: float | None = None, block_weights: str | Sequence[float] | None = None,
            strict: bool | None = None) -> Adapter:
        """Load an adapter file onto the model at ``strength`` (``te_strength`` for the text encoders, default
        the same) with optional block weights (a vector or preset, see ``sdlora.blocks``). ``name`` defaults
        to the file name without extension. Raises AdapterFileError for a file that does not fit the model
        (strict: any unmatched key); the model is then unchanged."""
        path = source.path if isinstance(source, AdapterFile) else str(source)
        name = name or Path(path).stem
        if name in self.adapters:
            raise AdapterFileError(f"an adapter named {name!r} is already in the stack; remove it first or give "
                                   "another name")
        strength = blocks.finite_strength(strength, f"{name}: the strength")
        te_strength = None if te_strength is None else blocks.finite_strength(te_strength, f"{name}: te_strength")
        bw = blocks.parse_block_weights(block_weights, self.model.family) if block_weights is not None else None
        source = source if isinstance(source, AdapterFile) else AdapterFile.read(source)  # no pickles here
        network, report = load_adapter(source, self.model.components(), self.model.family,
                                       strict=self.strict if strict is None else strict, attach=False)
        network.to(self.model.unet.device)
        short = files.short_hash(path) if Path(path).is_file() else ""
        spec = block_weights if block_weights is None or isinstance(block_weights, str) else \
            ",".join(f"{float(v):g}" for v in block_weights)
        adapter = Adapter(name, path, network, report, float(strength), _opt_float(te_strength), bw, spec, short)
        adapter._factors = block_factors(network, bw, self.model.unet.config)
        self.adapters[name] = adapter
        for _, _, module in network.items_by_module():
            self._layers.setdefault(id(module.base), _Layer(module.base)).modules.append((name, module))
        self._apply(adapter)
        return adapter

    # ------------------------------------------------------------- strengths
    def set_strength(self, name: str, strength: float | None = None, *, te_strength: Any = _KEEP,
                     block_weights: Any = _KEEP) -> Adapter:
        """Change one adapter's strength, text-encoder strength (None: follow ``strength``) and/or block
        weights (None: none). Touches only this adapter's modules (and, when fused, their layers)."""
        adapter = self[name]
        if strength is not None:
            adapter.strength = blocks.finite_strength(strength, f"{name}: the strength")
        if te_strength is not _KEEP:
            adapter.te_strength = None if te_strength is None else \
                blocks.finite_strength(te_strength, f"{name}: te_strength")
        if block_weights is not _KEEP:
            adapter.block_weights = None if block_weights is None else \
                blocks.parse_block_weights(block_weights, self.model.family)
            adapter.block_spec = block_weights if block_weights is None or isinstance(block_weights, str) else \
                ",".join(f"{float(v):g}" for v in block_weights)
            adapter._factors = block_factors(adapter.network, adapter.block_weights, self.model.unet.config)
        self._apply(adapter)
        return adapter

    def _apply(self, adapter: Adapter) -> None:
        """Set every module's multiplier; update its layers' hooks, and refold them when fused."""
        for module, component, w in adapter._factors:
            module.multiplier = module_multiplier(component, adapter.strength, adapter.te_strength, w)
            module.enabled = module.multiplier != 0.0
        touched = {id(m.base) for m in adapter.modules()}
        for key in touched:
            self._sync(self._layers[key])
        if self.fused:
            self._refold(touched)

    # ---------------------------------------------------------------- remove
    def remove(self, name: str) -> None:
        """Take an adapter off the model; its layers get their base weights back (bit for bit)."""
        adapter = self[name]
        touched = {id(m.base) for m in adapter.modules()}
        del self.adapters[name]
        for key in touched:
            layer = self._layers[key]
            layer.modules = [(n, m) for n, m in layer.modules if n != name]
            self._sync(layer)
        if self.fused:
            self._refold(touched)
        for key in touched:
            self._drop_if_empty(key)

    def clear(self) -> None:
        """Remove every adapter."""
        for name in list(self.adapters):
            self.remove(name)

    # ------------------------------------------------------------------ fuse
    @torch.no_grad()
    def fuse(self) -> None:
        """Fold every active adapter into the base weights (one backup per touched layer); hooks come off."""
        if self.fused:
            return
        self.fused = True
        self._refold(set(self._layers))
        for layer in self._layers.values():
            self._sync(layer)

    @torch.no_grad()
    def unfuse(self) -> None:
        """Restore every base weight exactly and go back to bypass mode."""
        if not self.fused:
            return
        for key, layer in list(self._layers.items()):
            self._restore(layer)
            self._drop_if_empty(key)
        self.fused = False
        for layer in self._layers.values():
            self._sync(layer)

    def _sync(self, layer: _Layer) -> None:
        """Rebuild the layer's list of active modules; register its hook or take it off to match."""
        layer.live = tuple((m, is_additive(m)) for _, m in layer.modules if m.enabled)
        wanted = bool(layer.live) and not self.fused
        if wanted and layer.handle is None:
            layer.handle = layer.layer.register_forward_hook(_bypass_hook(layer))
        elif not wanted and layer.handle is not None:
            layer.handle.remove()
            layer.handle = None

    def _drop_if_empty(self, key: int) -> None:
        layer = self._layers[key]
        if not layer.modules and layer.backup is None:
            if layer.handle is not None:
                layer.handle.remove()
            del self._layers[key]

    @torch.no_grad()
    def _refold(self, keys: set[int]) -> None:
        layers = [self._layers[k] for k in keys if k in self._layers]
        _back_up([layer for layer in layers if layer.live and layer.backup is None])
        for layer in layers:
            live = [m for m, _ in layer.live]
            if not live:
                self._restore(layer)
                continue
            base = layer.layer
            base.weight.copy_(fold_weight(layer.backup["weight"], live))
            if "bias" in layer.backup:
                base.bias.copy_(fold_bias(layer.backup["bias"], live))

    @staticmethod
    @torch.no_grad()
    def _restore(layer: _Layer) -> None:
        if layer.backup is None:
            return
        for attr, saved in layer.backup.items():
            getattr(layer.layer, attr).copy_(saved)
        layer.backup = None

    # --------------------------------------------------------------- reports
    def describe(self) -> list[dict[str, Any]]:
        """Per adapter (strength 0 included): name, path, strength, te_strength, block weights, short hash."""
        out = []
        for a in self.adapters.values():
            out.append(dict(name=a.name, path=a.path, strength=a.strength, te_strength=a.effective_te_strength,
                            block_weights=a.block_spec, short_hash=a.short_hash))
        return out


def _back_up(layers: list[_Layer]) -> None:
    """Give each layer a copy of its weight (and bias) to restore on unfuse, all in ONE buffer per device and
    dtype: hundreds of separate weight-sized blocks change how the C library maps the memory freed and
    allocated by every later forward, which measured a fused SD 1.5 UNet forward at 1.26x the base's (page
    faults, sdlora/memory.py); one buffer costs nothing per call."""
    tensors: dict[tuple, list[tuple[_Layer, str, Tensor]]] = {}
    for layer in layers:
        for attr in ("weight", "bias"):
            t = getattr(layer.layer, attr, None)
            if t is not None:
                tensors.setdefault((t.device, t.dtype), []).append((layer, attr, t.detach()))
        layer.backup = {}
    for (device, dtype), items in tensors.items():
        flat = torch.empty(sum(t.numel() for _, _, t in items), device=device, dtype=dtype)
        offset = 0
        for layer, attr, t in items:
            view = flat[offset:offset + t.numel()].view(t.shape)
            view.copy_(t)
            layer.backup[attr] = view
            offset += t.numel()


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
