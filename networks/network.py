"""The Network: which layers of a UNet and text encoders get adapters, and the adapters themselves.

A Network is an ``nn.ModuleDict`` of adapter modules keyed ``<component>/<module path with / for .>``
(components: "unet", "te1", "te2"). It knows layers and module paths, never file keys or model families.

Presets (``NetworkConfig.preset``):
  attn      UNet attention q/k/v/out (``to_q``, ``to_k``, ``to_v``, ``to_out.0``); CLIP self-attention
            ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``.
  attn-mlp  (default) every Linear and 1×1 Conv inside the UNet's Transformer2DModel blocks (attention,
            feed-forward, proj_in/proj_out); CLIP self-attention and MLP (fc1, fc2). kohya's LoRA coverage:
            SD1.5 192 UNet + 72 text-encoder modules; SDXL 722 + 264.
  full      attn-mlp plus resnet convs with their time-embedding projections and shortcuts, and the
            down/upsampler convs. kohya's LoCon coverage: SD1.5 278 UNet modules, SDXL 788.
  all       full plus conv_in, conv_out and the time/added-condition embedding MLPs (every Linear and Conv2d
            of the UNet): LyCORIS's full preset. SD1.5 282 UNet modules.
  none      nothing; use ``include`` to choose modules.
Text encoders get the same modules for attn-mlp, full and all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import torch.nn as nn

from sdlora.networks.base import AdapterModule
from sdlora.networks.full import FullModule, NormModule
from sdlora.networks.loha import LoHaModule
from sdlora.networks.lokr import LoKrModule
from sdlora.networks.lora import LoRAModule

ALGORITHMS: dict[str, type[AdapterModule]] = {
    "lora": LoRAModule,
    "locon": LoRAModule,  # LoCon is LoRA that also covers k×k convs; the preset decides which layers
    "loha": LoHaModule,
    "lokr": LoKrModule,
    "full": FullModule,
    "norm": NormModule,
}


def file_algorithm(tensors: dict) -> type[AdapterModule] | None:
    """The algorithm class of one file module's tensors (suffix -> tensor): the first registered class that
    holds them (the registry's order settles extras such as a LoRA's ``diff_b``), or None."""
    for cls in ALGORITHMS.values():
        if cls.holds(tensors):
            return cls
    return None


PRESETS = ("attn", "attn-mlp", "full", "all", "none")
COMPONENTS = ("unet", "te1", "te2")
BIAS_MODES = ("none", "all", "lora_only")

_UNET_TRANSFORMER = ("Transformer2DModel",)
_UNET_RESNET = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
_ATTN_CHILDREN = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class NetworkConfig:
    """What to build. Ranks apply to Linear and 1×1 conv layers; ``conv_rank`` to k×k convs (0 skips them)."""

    algo: str = "lora"
    rank: int = 8
    alpha: float | None = None  # None or 0: alpha = rank (γ = 1)
    conv_rank: int | None = None  # None: same as rank
    conv_alpha: float | None = None  # None: same as alpha
    preset: str = "attn-mlp"
    dora: bool = False
    rs_lora: bool = False
    tucker: bool = False
    factor: int = -1
    decompose_both: bool = False
    full_matrix: bool = False
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    layers_to_transform: list[int] = field(default_factory=list)
    layers_pattern: str = ""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    components: tuple[str, ...] = ("unet", "te1", "te2")
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.algo not in ALGORITHMS or self.algo in ("full", "norm"):
            raise ValueError(f"network algo {self.algo!r} is unknown; use one of lora, locon, loha, lokr")
        if self.preset not in PRESETS:
            raise ValueError(f"network preset {self.preset!r} is unknown; use one of {', '.join(PRESETS)}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"network bias {self.bias!r} is unknown; use one of {', '.join(BIAS_MODES)}")
        if self.rank < 1:
            raise ValueError(f"network rank must be at least 1, got {self.rank}")
        for c in self.components:
            if c not in COMPONENTS:
                raise ValueError(f"network component {c!r} is unknown; use one of {', '.join(COMPONENTS)}")


def _is_adaptable(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _k_by_k(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)


def preset_modules(root: nn.Module, component: str, preset: str) -> list[str]:
    """Module paths of ``root`` that ``preset`` covers, in named_modules order."""
    if preset == "none":
        return []
    if preset == "all" and component == "unet":
        return [n for n, m in root.named_modules() if _is_adaptable(m)]
    found: dict[str, None] = {}
    for name, mod in root.named_modules():
        cls = type(mod).__name__
        prefix = f"{name}." if name else ""
        if preset == "attn":
            if cls == "Attention" or cls.endswith("Attention"):
                for child in _ATTN_CHILDREN:
                    sub = mod.get_submodule(child) if _has(mod, child) else None
                    if sub is not None and _is_adaptable(sub):
                        found[prefix + child] = None
            continue
        if component == "unet":
            targets = _UNET_TRANSFORMER + (_UNET_RESNET if preset in ("full", "all") else ())
            if cls not in targets:
                continue
            for sub_name, sub in mod.named_modules():
                if not _is_adaptable(sub) or not sub_name:
                    continue
                if cls in _UNET_TRANSFORMER and _k_by_k(sub):
                    continue  # kohya's LoRA wraps only Linear and 1×1 convs in transformer blocks
                found[prefix + sub_name] = None
        elif cls.endswith("Attention") or cls.endswith("MLP"):
            for sub_name, sub in mod.named_modules():
                if sub_name and isinstance(sub, nn.Linear):
                    found[prefix + sub_name] = None
    return list(found)


def _has(mod: nn.Module, path: str) -> bool:
    try:
        mod.get_submodule(path)
        return True
    except AttributeError:
        return False


def module_key(component: str, path: str) -> str:
    """The Network's key for a module: ``unet/down_blocks/0/...`` (ModuleDict keys cannot hold dots)."""
    return f"{component}/{path.replace('.', '/')}"


def split_module_key(key: str) -> tuple[str, str]:
    component, _, rest = key.partition("/")
    return component, rest.replace("/", ".")


def _first_match(patterns: dict, text: str):
    for pattern, value in patterns.items():
        if re.search(pattern, text):
            return value
    return None


class Network(nn.ModuleDict):
    """Adapter modules attached to the layers of a UNet and/or text encoders.

    ``models`` maps component names ("unet", "te1", "te2") to the modules that own the layers.
    Build from a config with ``Network.create`` or from ready modules (e.g. read from a file) with
    ``Network(models, modules)``.
    """

    def __init__(self, models: dict[str, nn.Module], modules: dict[tuple[str, str], AdapterModule] | None = None,
                 config: NetworkConfig | None = None):
        super().__init__()
        self.models = dict(models)
        self.config = config
        self._multiplier = 1.0
        for (component, path), module in (modules or {}).items():
            self[module_key(component, path)] = module

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, models: dict[str, nn.Module], config: NetworkConfig | None = None) -> "Network":
        """Create fresh adapters (ΔW = 0) on the layers ``config`` selects."""
        cfg = config or NetworkConfig()
        modules: dict[tuple[str, str], AdapterModule] = {}
        for component, root in models.items():
            if component not in cfg.components or root is None:
                continue
            for path in select_modules(root, component, cfg):
                layer = root.get_submodule(path)
                modules[(component, path)] = _make_adapter(layer, f"{component}.{path}", cfg)
            for path in _modules_to_save(root, component, cfg, exclude=modules):
                layer = root.get_submodule(path)
                cls_ = NormModule if isinstance(layer, (nn.GroupNorm, nn.LayerNorm)) else FullModule
                modules[(component, path)] = cls_(layer)
            if cfg.bias == "all":
                for path, layer in root.named_modules():
                    if _is_adaptable(layer) and layer.bias is not None and (component, path) not in modules:
                        modules[(component, path)] = FullModule(layer, weight=False)
        return cls(models, modules, cfg)

    # -------------------------------------------------------------- accessors
    def items_by_module(self) -> Iterator[tuple[str, str, AdapterModule]]:
        """(component, module path, adapter) for every adapter."""
        for key, module in self.items():
            component, path = split_module_key(key)
            yield component, path, module

    def components(self) -> list[str]:
        return sorted({split_module_key(k)[0] for k in self.keys()})

    # ------------------------------------------------------------- strengths
    @property
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self.set_multiplier(value)

    def set_multiplier(self, value: float, component: str | None = None) -> None:
        """Set the strength of every adapter, or of one component's (e.g. a separate text-encoder strength).
        Takes effect at the next forward pass in bypass mode; merged adapters are re-merged."""
        if component is None:
            self._multiplier = float(value)
        for comp, _, module in self.items_by_module():
            if component is None or comp == component:
                remerge = module.merged
                if remerge:
                    module.unmerge()
                module.multiplier = float(value)
                if remerge:
                    module.merge()

    # ------------------------------------------------------------- modes
    def attach(self) -> "Network":
        """Bypass mode: adapters add their output to their layers' (base weights untouched)."""
        for module in self.values():
            module.attach()
        return self

    def detach(self) -> None:
        """Remove every adapter from its layer; the base weights are restored if merged."""
        for module in self.values():
            module.detach()

    def merge(self) -> None:
        """Fold every adapter into its layer's weights at its current strength."""
        for module in self.values():
            module.merge()

    def unmerge(self) -> None:
        """Restore the exact base weights (reverse order, so layers merged twice come back exact)."""
        for module in reversed(list(self.values())):
            module.unmerge()

    def freeze_bases(self) -> None:
        """Freeze every parameter of the base models; adapters keep requires_grad."""
        for model in self.models.values():
            if model is not None:
                model.requires_grad_(False)
        self.requires_grad_(True)

    # ------------------------------------------------------------- reports
    def parameter_report(self) -> dict[str, dict[str, dict[str, int]]]:
        """{component: {algo: {"modules": n, "parameters": n}}} over trainable adapter parameters."""
        report: dict[str, dict[str, dict[str, int]]] = {}
        for comp, _, module in self.items_by_module():
            row = report.setdefault(comp, {}).setdefault(module.algo, {"modules": 0, "parameters": 0})
            row["modules"] += 1
            row["parameters"] += sum(p.numel() for p in module.parameters() if p.requires_grad)
        return report

    def format_report(self) -> str:
        """The parameter report as aligned text lines, with a total."""
        names = {"unet": "UNet", "te1": "text encoder 1", "te2": "text encoder 2"}
        lines, total = [], 0
        for comp, algos in sorted(self.parameter_report().items()):
            for algo, row in sorted(algos.items()):
                lines.append(f"  {names.get(comp, comp):<15} {algo:<5} {row['modules']:>5} modules {row['parameters']:>12,} parameters")
                total += row["parameters"]
        lines.append(f"  {'total':<15} {'':<5} {len(self):>5} modules {total:>12,} parameters")
        return "\n".join(lines)


def select_modules(root: nn.Module, component: str, cfg: NetworkConfig) -> list[str]:
    """The module paths of ``root`` that get a low-rank adapter under ``cfg``."""
    paths = preset_modules(root, component, cfg.preset)
    chosen = dict.fromkeys(paths)
    if cfg.include:
        for name, mod in root.named_modules():
            if name and _is_adaptable(mod) and any(re.search(p, f"{component}.{name}") for p in cfg.include):
                chosen[name] = None
    result = []
    conv_rank = cfg.rank if cfg.conv_rank is None else cfg.conv_rank
    layer_re = re.compile(rf"(?:^|\.){re.escape(cfg.layers_pattern)}\.(\d+)(?:\.|$)") if cfg.layers_pattern else None
    pattern_in_component = layer_re is not None and any(layer_re.search(p) for p in chosen)
    for path in chosen:
        full = f"{component}.{path}"
        if any(re.search(p, full) for p in cfg.exclude):
            continue
        if cfg.layers_to_transform and pattern_in_component:
            match = layer_re.search(path)
            if not match or int(match.group(1)) not in cfg.layers_to_transform:
                continue
        if _k_by_k(root.get_submodule(path)) and conv_rank == 0:
            continue
        result.append(path)
    return result


def _modules_to_save(root: nn.Module, component: str, cfg: NetworkConfig, exclude) -> list[str]:
    if not cfg.modules_to_save:
        return []
    out = []
    for name, mod in root.named_modules():
        if not name or (component, name) in exclude:
            continue
        if not (_is_adaptable(mod) or isinstance(mod, (nn.GroupNorm, nn.LayerNorm))):
            continue
        if any(re.search(p, f"{component}.{name}") for p in cfg.modules_to_save):
            out.append(name)
    return out


def _make_adapter(layer: nn.Module, full_name: str, cfg: NetworkConfig) -> AdapterModule:
    conv = _k_by_k(layer)
    rank = cfg.rank if not conv or cfg.conv_rank is None else cfg.conv_rank
    alpha = cfg.alpha if not conv or cfg.conv_alpha is None else cfg.conv_alpha
    override = _first_match(cfg.rank_pattern, full_name)
    if override is not None:
        rank = int(override)
    override = _first_match(cfg.alpha_pattern, full_name)
    if override is not None:
        alpha = float(override)
    common = dict(dora=cfg.dora, rs_lora=cfg.rs_lora, dropout=cfg.dropout, rank_dropout=cfg.rank_dropout,
                  module_dropout=cfg.module_dropout, train_bias=cfg.bias in ("all", "lora_only"))
    cls = ALGORITHMS[cfg.algo]
    extra: dict = {"tucker": cfg.tucker}
    if cls is LoKrModule:
        extra.update(factor=cfg.factor, decompose_both=cfg.decompose_both, full_matrix=cfg.full_matrix)
    return cls(layer, rank, alpha, **extra, **common)
