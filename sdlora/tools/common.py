"""What the adapter tools share: the reference model, reading files per module, ΔW, SVD, error report, writing.

Every tool works per module, keyed by ``Key = (component, canonical path)`` (see ``keys``), so files that
name the same layer in different dialects (kohya SGM / kohya diffusers / LyCORIS / PEFT) line up.

The reference is what names and shapes come from:
- ``--model`` (a BaseModel, a model folder, or {"unet": ..., "te1": ...}): exact shapes and, because it
  holds weights, DoRA can be folded (its change depends on W);
- otherwise the family's real-size model built on the meta device from the configs shipped in
  sdlora/assets (no weights, no memory): every real SD1/SD2/SDXL file resolves against it.

ΔW has one source: the networks classes (``AdapterModule.delta_weight``), built on the reference's layer
(a meta layer is enough: ΔW needs only the tensors and the layer's shape).
"""
from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn

from sdlora import keys
from sdlora.files import tensors as files
from sdlora.adapters import (
    FAMILY_NAMES, AdapterFile, adaptable_paths, adapter_tensors, build_metadata, build_module, module_algo,
    peft_metadata,
)
from sdlora.errors import AdapterFileError, ConfigError, ModelError
from sdlora.networks import AdapterModule, Network
from sdlora.networks.full import FullModule, NormModule
from sdlora.networks.lora import LoRAModule

Tensor = torch.Tensor
Key = tuple[str, str]  # (component, canonical module path)
ModelLike = Union[str, Path, Any, dict, None]  # folder / BaseModel / {"unet": ..., "te1": ...} / None
DIALECTS = ("kohya", "lycoris", "peft")
UNET_NAMES = ("sgm", "diffusers")
# Metadata keys that describe the network itself: recomputed for every written file.
_NETWORK_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                 "modelspec.architecture", "sshs_model_hash", "sshs_legacy_hash", "lora_adapter_metadata",
                 "format")


# ------------------------------------------------------------------------------------------ reference
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
    from sdlora.models.configs import config_dir
    from sdlora.models.core import SHIPPED, build_skeletons, read_config_folder

    skeletons = build_skeletons(family, read_config_folder(config_dir(SHIPPED[family])))
    names = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}
    return {c: skeletons[n] for c, n in names.items() if n in skeletons}


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
            from sdlora.models.core import detect_family
            fam = detect_family(models["unet"].config, models.get("te2"))
    else:
        from sdlora.models.core import open_model
        base = model if hasattr(model, "components") else open_model(model)
        models, fam, source = base.components(), base.family, str(getattr(base, "source", "") or model)
        if family is not None and family != fam:
            raise ModelError(f"the adapter is for {FAMILY_NAMES[family]} but {source} is an "
                             f"{FAMILY_NAMES[fam]} model; pass the base model the adapter was made for")
    has_weights = all(p.device.type != "meta" for m in models.values() for p in m.parameters())
    return Reference(fam, models, has_weights, source)


# ------------------------------------------------------------------------------------------- reading
@dataclass
class Source:
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


def resolve(af: AdapterFile, ref: Reference) -> Source:
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
    return Source(af.path, af, modules, names, dialect, _unet_style(names, ref), ref)


def read_source(path: str | Path, family: str | None = None, model: ModelLike = None,
                ref: Reference | None = None) -> Source:
    """Read and resolve one file (a reference is opened for its family unless given)."""
    af = read_file(path)
    if ref is None:
        ref = open_reference(file_family(af, family), model)
    elif (fam := file_family(af, family)) is not None and fam != ref.family:
        raise AdapterFileError(f"{path}: this is an {FAMILY_NAMES[fam]} adapter; the others are "
                               f"{FAMILY_NAMES[ref.family]} — inputs must be of one family")
    return resolve(af, ref)


def dialect_of(name: str) -> str:
    """The naming dialect of a module name as written (prefix test only; keys.py does the real parsing)."""
    if name.startswith("lycoris_"):
        return "lycoris"
    return "kohya" if name.startswith("lora_") else "peft"


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


# -------------------------------------------------------------------------------------------- deltas
@dataclass
class Delta:
    """What one module changes at strength 1, in float32.

    weight: γ·ΔW in the layer's weight shape (out, in[, kh, kw]), None for bias/norm-only modules
    bias:   Δb (out,) of a Linear/Conv2d (``diff_b``), or None
    norm:   {"w_norm": (C,), "b_norm": (C,)} of a GroupNorm/LayerNorm delta, or None
    gamma:  the module's scale γ (alpha/rank; 1 for full, norm and full-rank LoKr)
    dora:   the DoRA magnitude (``dora_scale``) when kept rather than folded
    """

    weight: Tensor | None = None
    bias: Tensor | None = None
    norm: dict[str, Tensor] | None = None
    gamma: float = 1.0
    dora: Tensor | None = None

    def add(self, other: "Delta", w: float = 1.0) -> "Delta":
        """self + w·other (DoRA magnitudes are not additive: the caller folds them first)."""
        def s(a, b):
            if b is None:
                return a
            return b * w if a is None else a + b * w
        norm = None
        if self.norm is not None or other.norm is not None:
            mine, theirs = self.norm or {}, other.norm or {}
            norm = {k: s(mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs)}
        return Delta(s(self.weight, other.weight), s(self.bias, other.bias), norm, self.gamma)


def module_delta(layer: nn.Module, tensors: dict[str, Tensor], *, dora: str = "fold", where: str = "") -> Delta:
    """The Delta of one module's file tensors on ``layer`` (a meta layer is enough unless DoRA is folded).

    ``dora``: "fold" gives DoRA's effective change at strength 1, merged_weight(W) − W (needs W);
    "keep" gives the directional γ·ΔW and carries ``dora_scale`` in ``Delta.dora``.
    """
    module = built_module(layer, tensors, where)
    if isinstance(module, NormModule):
        norm = {"w_norm": module.w_norm.detach().float()}
        if module.b_norm is not None:
            norm["b_norm"] = module.b_norm.detach().float()
        return Delta(norm=norm)
    with torch.no_grad():
        weight = None if isinstance(module, FullModule) and module.diff is None else module.delta_weight().float()
        bias = None if module.diff_b is None else module.diff_b.detach().float()
        mag = module.dora_scale
        if mag is None or dora == "keep":
            return Delta(weight, bias, gamma=float(module.scale), dora=None if mag is None else mag.detach())
        if layer.weight.device.type == "meta":
            raise AdapterFileError(f"{where}: a DoRA module's change depends on the base weights; pass --model "
                                   "with the base model the adapter was made for")
        base = layer.weight.detach().float()
        return Delta(module.merged_weight(base, 1.0) - base, bias, gamma=float(module.scale))


def dora_shape(mag: Tensor, weight: Tensor) -> tuple[int, ...]:
    """PEFT's lora_magnitude_vector is (out,): the row-norm form is (out, 1[, 1, 1])."""
    if mag.dim() == 1:
        return (mag.shape[0], *[1] * (weight.dim() - 1))
    return tuple(mag.shape)


# ----------------------------------------------------------------------------------------------- SVD
def check_rank_options(rank: int | None, energy: float | None, conv_rank: int | None = None,
                       *, allow_zero_conv: bool = False) -> None:
    if rank is None and energy is None:
        raise ConfigError("give a target rank (--rank R) or an energy threshold (--energy 0.9)")
    if rank is not None and int(rank) < 1:
        raise ConfigError(f"--rank must be at least 1, got {rank}")
    if conv_rank is not None and int(conv_rank) < (0 if allow_zero_conv else 1):
        least = "0 (0 skips k×k convs)" if allow_zero_conv else "1"
        raise ConfigError(f"--conv-rank must be at least {least}, got {conv_rank}")
    if energy is not None and not (0.0 < float(energy) <= 1.0):
        raise ConfigError(f"--energy must be in (0, 1] (the share of ΔW's squared singular values to keep), "
                          f"got {energy}")


def is_kxk(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def choose_rank(s: Tensor, rank: int | None, energy: float | None) -> int:
    """The rank to keep of singular values ``s`` (descending): ``rank`` capped at full rank, and with
    ``energy`` the smallest r whose cumulative squared singular values reach energy·total (capped by rank)."""
    full = int(s.numel())
    r = full if rank is None else min(int(rank), full)
    if energy is not None:
        e = s.double() ** 2
        total = float(e.sum())
        if total > 0:
            reached = torch.cumsum(e, 0) >= float(energy) * total * (1 - 1e-12)
            r = min(r, int(torch.nonzero(reached)[0]) + 1)
        else:
            r = 1
    return max(1, r)


SVD_DIRECT_MAX = 1 << 18  # layers up to this many elements get a plain float64 SVD
RANGE_TOL = 1e-12  # the range route accepts when ‖ΔW − QQᵀΔW‖² ≤ RANGE_TOL·‖ΔW‖² (1e-6 relative: fp32 noise)


def svd_factors(delta: Tensor, rank: int | None, energy: float | None, gamma: float = 1.0
                ) -> tuple[Tensor, Tensor]:
    """LoRA factors of ``delta`` (out, in[, kh, kw]) with γ·up@down = its best rank-r approximation.

    up (out, r) / down (r, in) for Linear; up (out, r, 1, 1) / down (r, in, kh, kw) for Conv2d. All in
    float64. Small layers: an SVD. Larger ones: first the range route — ΔW's range from ΔW·Ω (Ω random,
    k columns, k grown ×4 while k < min(out, in)/2), accepted when it holds all of ΔW but RANGE_TOL (the sums
    of LoRA-family adapters have low rank: then the SVD of the small QᵀΔW is the SVD of ΔW); else the
    eigenvectors of the smaller Gram matrix (full-rank differences, e.g. extract). Each side carries √σ
    (balanced for fp16), divided by √|γ|.
    """
    out_dim = delta.shape[0]
    flat = delta.reshape(out_dim, -1).double()
    factors = _svd_route(flat, rank, energy) if flat.numel() <= SVD_DIRECT_MAX else None
    if factors is None:
        factors = _range_route(flat, rank, energy) or _gram_route(flat, rank, energy)
    up, down = factors
    root = math.sqrt(abs(gamma))
    up, down = (up * (math.copysign(1.0, gamma) / root)).float(), (down / root).float()
    r = down.shape[0]
    if delta.dim() == 4:
        up = up.reshape(out_dim, r, 1, 1)
        down = down.reshape(r, *delta.shape[1:])
    return up.contiguous(), down.contiguous()


def _svd_route(x: Tensor, rank: int | None, energy: float | None, q: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Balanced rank-r factors from the SVD of x (m, n); with ``q`` (M, m) orthonormal, of q@x."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    r = choose_rank(s, rank, energy)
    up = u[:, :r] if q is None else q @ u[:, :r]
    return up * s[:r].sqrt(), s[:r].sqrt()[:, None] * vh[:r]


def _range_route(x: Tensor, rank: int | None, energy: float | None) -> tuple[Tensor, Tensor] | None:
    """Exact factors of a low-rank x (m, n) through its range, or None when x is not of low rank."""
    full = min(x.shape)
    total = float(x.pow(2).sum())
    if total == 0:
        return None
    gen = torch.Generator().manual_seed(0)
    k = 64
    while k <= full // 2:
        q, _ = torch.linalg.qr(x @ torch.randn(x.shape[1], k, dtype=x.dtype, generator=gen))
        b = q.T @ x  # (k, n): x = q @ b when the range is held
        if total - float(b.pow(2).sum()) <= RANGE_TOL * total:
            return _svd_route(b, rank, energy, q)
        k *= 4
    return None


def _gram_route(x: Tensor, rank: int | None, energy: float | None) -> tuple[Tensor, Tensor]:
    """Rank-r factors of x (m, n) from the eigen-decomposition of its smaller Gram matrix (float64):
    B = the top-r eigenvectors; wide: up = B, down = Bᵀx; tall: up = xB, down = Bᵀ; then balanced."""
    wide = x.shape[0] <= x.shape[1]
    lam, vec = torch.linalg.eigh(x @ x.T if wide else x.T @ x)
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    r = choose_rank(lam.sqrt(), rank, energy)
    basis = vec[:, :r]
    up, down = (basis, basis.T @ x) if wide else (x @ basis, basis.T)
    sigma = down.norm(dim=1) if wide else up.norm(dim=0)  # ≈ the singular values
    s = sigma.sqrt().masked_fill(sigma == 0, 1.0)
    return (up * s, down / s[:, None]) if wide else (up / s, down * s[:, None])


# -------------------------------------------------------------------------------------------- report
@dataclass
class ModuleFit:
    name: str
    rank: int
    error: float  # ‖ΔW − ΔŴ‖_F (absolute)
    norm: float  # ‖ΔW‖_F

    @property
    def relative(self) -> float:
        return self.error / self.norm if self.norm > 0 else 0.0


@dataclass
class Report:
    """What a tool wrote and how far from exact it is."""

    action: str
    out: str
    modules: int = 0
    fits: list[ModuleFit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        """Overall ‖ΔW − ΔŴ‖/‖ΔW‖ over every fitted module: √(Σ errors² / Σ norms²)."""
        num = sum(f.error ** 2 for f in self.fits)
        den = sum(f.norm ** 2 for f in self.fits)
        return math.sqrt(num / den) if den > 0 else 0.0

    def worst(self, n: int = 5) -> list[ModuleFit]:
        return sorted(self.fits, key=lambda f: -f.relative)[:n]

    def ranks(self) -> dict[int, int]:
        return dict(sorted(collections.Counter(f.rank for f in self.fits).items()))

    def format(self) -> str:
        lines = [f"{self.action}: wrote {self.out} ({self.modules} modules)"]
        if self.fits:
            lines.append("ranks: " + ", ".join(f"{r} x{n}" for r, n in self.ranks().items()))
            lines.append(f"relative Frobenius error ‖ΔW − ΔŴ‖/‖ΔW‖: {self.relative_error:.3e} overall")
            for f in self.worst():
                lines.append(f"  {f.relative:.3e}  rank {f.rank:<4} {f.name}")
        lines += self.notes
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return dict(action=self.action, out=self.out, modules=self.modules, relative_error=self.relative_error,
                    ranks=self.ranks(), worst=[(f.name, f.rank, f.relative) for f in self.worst()],
                    notes=self.notes)


def lora_module(layer: nn.Module, delta: Delta, rank: int | None, energy: float | None, gamma: float,
                dtype: torch.dtype, name: str) -> tuple[AdapterModule, ModuleFit | None]:
    """A LoRA/LoCon module on ``layer`` approximating ``delta`` (with its bias / DoRA magnitude carried),
    the factors rounded to ``dtype`` as they will be written, and the fit of what it really holds."""
    if delta.weight is None:  # bias-only or norm delta: written as it is (exact)
        if delta.norm is not None:
            return NormModule.from_tensors(layer, {k: v.to(dtype) for k, v in delta.norm.items()}), None
        return FullModule.from_tensors(layer, {"diff_b": delta.bias.to(dtype)}), None
    up, down = svd_factors(delta.weight, rank, energy, gamma)
    r = down.shape[0]
    tensors = {"lora_down.weight": down.to(dtype), "lora_up.weight": up.to(dtype),
               "alpha": torch.tensor(gamma * r, dtype=torch.float32)}
    if delta.bias is not None:
        tensors["diff_b"] = delta.bias.to(dtype)
    module = LoRAModule.from_tensors(layer, tensors)
    with torch.no_grad():
        got = module.delta_weight().double()
    target = delta.weight.double()
    fit = ModuleFit(name, r, float((target - got).norm()), float(target.norm()))
    if delta.dora is not None:
        mag = delta.dora.detach().reshape(dora_shape(delta.dora, delta.weight))
        module.dora_scale = nn.Parameter(mag.to(dtype).float().clone())
    module.requires_grad_(False)
    return module, fit


# ------------------------------------------------------------------------------------------- writing
def kohya_unet_name(path: str, style: str, unet_config: Any) -> str:
    """kohya name of a UNet module in SGM (`lora_unet_input_blocks_…`) or diffusers (`lora_unet_down_blocks_…`)
    form, whatever the family (keys.kohya_name writes SGM for the SDXL family, diffusers for SD1/SD2)."""
    return keys.kohya_name("unet", path, "sdxl" if style == "sgm" else "sd1", unet_config)


def output_name(key: Key, ref: Reference, dialect: str, unet_names: str | None) -> str:
    """The module name ``key`` gets in a file of ``dialect``.

    kohya:   lora_unet_… (``unet_names`` sgm/diffusers; default SGM for SDXL, diffusers otherwise),
             lora_te_/lora_te1_/lora_te2_text_model_…
    lycoris: "lycoris_" + the layer's named_modules path (LyCORIS's own wrapper, one model per name space)
    peft:    unet.… / text_encoder.text_model.… / text_encoder_2.text_model.…
    """
    component, path = key
    if dialect == "peft":
        return keys.peft_name(component, path)
    if dialect == "lycoris":
        if component == "te2" or (component == "te1" and "te2" in ref.models):
            raise AdapterFileError("LyCORIS's own names (lycoris_…) cannot tell SDXL's two text encoders apart; "
                                   "convert to kohya instead")
        name = "lycoris_" + ref.raw_path(key).replace(".", "_")
        if ref.table.get(name) != key:  # keys.py is the authority on names: check we agree with it
            raise AdapterFileError(f"{name}: no LyCORIS name for {component}.{path}; convert to kohya instead")
        return name
    if component == "unet":
        style = unet_names or ("sgm" if ref.family == "sdxl" else "diffusers")
        try:
            return kohya_unet_name(path, style, ref.unet_config)
        except ValueError as exc:
            raise AdapterFileError(f"{exc} Use --unet-names diffusers") from None
    return keys.kohya_name(component, path, ref.family, ref.unet_config)


def check_dialect(dialect: str, unet_names: str | None = None) -> None:
    if dialect not in DIALECTS:
        raise ConfigError(f"unknown target format {dialect!r}; use one of {', '.join(DIALECTS)}")
    if unet_names is not None and unet_names not in UNET_NAMES:
        raise ConfigError(f"unknown --unet-names {unet_names!r}; use sgm or diffusers")


def carried_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """An input's metadata minus what describes the network (dims, module, args, hashes): the training
    facts (tags, dataset, base model version, title) a derived file keeps."""
    return {k: v for k, v in metadata.items() if k not in _NETWORK_KEYS}


def write_network(out: str | Path, modules: dict[Key, AdapterModule], ref: Reference, *, dialect: str,
                  unet_names: str | None, dtype: torch.dtype, carried: dict[str, str] | None = None,
                  extra: dict[str, str] | None = None, v_prediction: bool = False) -> dict[str, str]:
    """Write ``modules`` atomically in ``dialect`` with metadata recomputed from them (``carried`` keys of an
    input are kept where they do not describe the network; ``extra`` is added)."""
    if not modules:
        raise AdapterFileError("nothing to write: no module is left")
    network = Network(ref.models, {(k[0], ref.raw_path(k)): m for k, m in modules.items()})
    if dialect == "peft":
        for key, module in modules.items():
            why = peft_cannot_hold(module)
            if why:
                raise AdapterFileError(f"{output_name(key, ref, 'kohya', None)}: the diffusers/PEFT format cannot "
                                       f"hold {why}; write kohya instead")
        tensors = adapter_tensors(network, ref.family, ref.unet_config, "peft")
        meta = peft_metadata(network)
        meta.update({k: v for k, v in (carried or {}).items() if k.startswith(("sdlora_", "modelspec.", "ss_"))})
        meta.update(extra or {})
        return files.write_tensors(out, tensors, meta, dtype=dtype, hashes=False)
    tensors = {}
    for key, module in modules.items():
        name = output_name(key, ref, dialect, unet_names)
        for suffix, value in module.state_dict().items():
            tensors[f"{name}.{suffix}"] = value.detach().float() if suffix == "alpha" else value.detach()
    meta = dict(carried or {})
    fresh = build_metadata(network, ref.family, name=meta.get("ss_output_name", ""), v_prediction=v_prediction)
    for k, v in fresh.items():
        if k in _NETWORK_KEYS or k not in meta:
            meta[k] = v
    meta.update(extra or {})
    return files.write_tensors(out, tensors, meta, dtype=dtype, hashes=True)


def output_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    return files.parse_dtype(dtype) or default


def algo_of(tensors: dict[str, Tensor]) -> str:
    """"lora", "loha", "lokr", "full", "norm", with "+dora" and "+tucker" marks."""
    algo = module_algo(tensors) or "?"
    if "lora_mid.weight" in tensors or "hada_t1" in tensors or "lokr_t2" in tensors:
        algo += "+tucker"
    return algo + ("+dora" if "dora_scale" in tensors else "")


def peft_cannot_hold(module: AdapterModule) -> str | None:
    """Why the diffusers/PEFT format cannot hold ``module`` (None when it can): PEFT holds plain LoRA/LoCon
    with an optional row-norm DoRA magnitude (lora_magnitude_vector, (out,))."""
    if not isinstance(module, LoRAModule):
        return f"a {module.algo} module (only LoRA/LoCon)"
    if module.tucker:
        return "a Tucker LoCon (lora_mid)"
    if module.diff_b is not None:
        return "a bias delta (diff_b)"
    mag = module.dora_scale
    if mag is not None and (mag.shape[0] != module.shape[0] or mag.numel() != module.shape[0]):
        return "a column-norm DoRA magnitude (older DoRA files)"
    return None


def built_module(layer: nn.Module, tensors: dict[str, Tensor], where: str = "") -> AdapterModule:
    """An adapter module on ``layer`` (a meta layer is fine) holding ``tensors``, DoRA magnitude included."""
    tensors = {k: v for k, v in tensors.items() if k not in ("scale", "on_input")}
    mag = tensors.pop("dora_scale", None)
    try:
        module = build_module(layer, tensors)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        hint = ("; the file does not fit the shipped model config: pass --model with the base model it was made "
                "for" if layer.weight.device.type == "meta" else "; the file was made for another model")
        raise AdapterFileError(f"{where}: {exc}{hint}") from None
    if mag is not None:
        module.dora_scale = nn.Parameter(mag.detach().float().reshape(dora_shape(mag, layer.weight)), requires_grad=False)
    return module
