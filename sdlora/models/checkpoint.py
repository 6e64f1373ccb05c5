"""The original single-file layout (LDM/SGM, as A1111 and ComfyUI read it) <-> diffusers state-dict keys.

A layout is a list of ``Entry``: one tensor of the original file, the diffusers keys of one pipeline
component it holds, and how the two relate:

    copy       the same tensor under another name
    conv1x1    VAE mid-block attention q/k/v/proj_out: diffusers Linear (C, C) <-> original conv (C, C, 1, 1)
    transpose  OpenCLIP text_projection (width, proj) <-> diffusers Linear weight (proj, width)
    qkv        OpenCLIP attn.in_proj_weight (3C, C) / in_proj_bias (3C,) <-> q_proj, k_proj, v_proj

Prefixes (FORMATS.md): UNet ``model.diffusion_model.`` (SGM block names, see keys.unet_sgm_path), VAE
``first_stage_model.``, SD1 text encoder ``cond_stage_model.transformer.text_model.`` (transformers-4
names whatever transformers is installed), SD2 OpenCLIP ``cond_stage_model.model.``, SDXL
``conditioner.embedders.0.transformer.text_model.`` and ``conditioner.embedders.1.model.``.

The layout is derived from the diffusers models' own keys, so one list serves both directions and a
save -> open round trip is exact. Keys of the original file that no entry names (EMA weights, noise
schedule buffers, the last OpenCLIP block SD2 does not use, ``logit_scale``) are ignored on reading.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sdlora import keys as keynames

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": "cond_stage_model.transformer.text_model."},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": "cond_stage_model.model."},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": "conditioner.embedders.0.transformer.text_model.",
             "text_encoder_2": "conditioner.embedders.1.model."},
}
OPENCLIP = {("sd2", "text_encoder"), ("sdxl", "text_encoder_2")}
V_PRED_KEY = "v_pred"  # ComfyUI's marker of a v-prediction checkpoint (an empty tensor)
NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "second text encoder"}


@dataclass(frozen=True)
class Entry:
    """One tensor of the original file (``key``) and the diffusers keys (``parts``) of ``component``."""

    key: str
    component: str
    parts: tuple[str, ...]
    kind: str = "copy"


# ------------------------------------------------------------------------------------------ naming
_VAE_RULES: list[tuple[str, Callable[[re.Match, int], str]]] = [
    (r"^(encoder|decoder)\.conv_norm_out\.", lambda m, n: f"{m[1]}.norm_out."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, n: f"encoder.down.{m[1]}.block.{m[2]}."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m, n: f"encoder.down.{m[1]}.downsample."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}."),
    (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m, n: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m, n: f"{m[1]}.mid.attn_1."),
]
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_original_key(key: str, n_up: int) -> tuple[str, str]:
    """(original key, kind) of a diffusers AutoencoderKL key; ``n_up`` = number of decoder up blocks."""
    for pattern, repl in _VAE_RULES:
        m = re.match(pattern, key)
        if not m:
            continue
        head, rest = repl(m, n_up), key[m.end():]
        if head.endswith("attn_1."):
            module, _, param = rest.rpartition(".")
            new = _VAE_ATTN.get(module, module)
            kind = "conv1x1" if param == "weight" and new in ("q", "k", "v", "proj_out") else "copy"
            return f"{head}{new}.{param}", kind
        return head + rest.replace("conv_shortcut.", "nin_shortcut."), "copy"
    return key, "copy"


_OPENCLIP_RULES = [
    (r"^embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.resblocks.\1.attn.out_proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"transformer.resblocks.\1.ln_1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"transformer.resblocks.\1.ln_2."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.resblocks.\1.mlp.c_fc."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.resblocks.\1.mlp.c_proj."),
    (r"^final_layer_norm\.", "ln_final."),
]
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def canonical_te_key(key: str) -> str:
    """A text encoder state-dict key without transformers' optional ``text_model.`` level."""
    return key.removeprefix("text_model.")


def openclip_original_key(canonical: str) -> tuple[str, str]:
    """(original key, kind) of a canonical CLIP text-encoder key in the OpenCLIP layout. q/k/v keys give the
    fused ``in_proj`` key with kind "qkv"."""
    m = _QKV.match(canonical)
    if m:
        return f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", "qkv"
    if canonical == "text_projection.weight":
        return "text_projection", "transpose"
    for pattern, repl in _OPENCLIP_RULES:
        new, n = re.subn(pattern, repl, canonical)
        if n:
            return new, "copy"
    raise ValueError(f"no OpenCLIP name for text encoder key {canonical!r}")


# ------------------------------------------------------------------------------------------ layout
def layout(family: str, component_keys: Mapping[str, Collection[str]], unet_config: Any,
           n_vae_up: int) -> list[Entry]:
    """The entries of a ``family`` single file for the diffusers keys of each component
    ({"unet": [...], "vae": [...], "text_encoder": [...], ...}, as in the models' state_dict())."""
    prefixes = PREFIXES[family]
    entries: list[Entry] = []
    for component in COMPONENTS:
        if component not in component_keys:
            continue
        prefix = prefixes[component]
        keys = list(component_keys[component])
        if component == "unet":
            for k in keys:
                module, _, param = k.rpartition(".")
                sgm = keynames.unet_sgm_path(module, unet_config)
                if sgm is None:
                    raise ValueError(f"UNet key {k!r} has no original-layout name")
                entries.append(Entry(f"{prefix}{sgm}.{param}", component, (k,)))
        elif component == "vae":
            for k in keys:
                name, kind = vae_original_key(k, n_vae_up)
                entries.append(Entry(prefix + name, component, (k,), kind))
        elif (family, component) in OPENCLIP:
            entries.extend(_openclip_entries(prefix, component, keys))
        else:
            entries.extend(Entry(prefix + canonical_te_key(k), component, (k,)) for k in keys)
    return entries


def _openclip_entries(prefix: str, component: str, keys: list[str]) -> list[Entry]:
    grouped: dict[str, dict[str, str]] = {}
    out: list[Entry] = []
    for k in keys:
        canonical = canonical_te_key(k)
        name, kind = openclip_original_key(canonical)
        if kind == "qkv":
            grouped.setdefault(name, {})[_QKV.match(canonical)[2]] = k
        else:
            out.append(Entry(prefix + name, component, (k,), kind))
    for name, parts in grouped.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{name}: q, k and v projections must all be present")
        out.append(Entry(prefix + name, component, (parts["q"], parts["k"], parts["v"]), "qkv"))
    return out


def extra_tensors(family: str, text_positions: int, v_prediction: bool) -> dict[str, torch.Tensor]:
    """Tensors a single file carries beyond the weights: CLIP ``position_ids`` (int64, (1, positions)),
    which older A1111 code expects, and the empty ``v_pred`` marker for v-prediction models."""
    out: dict[str, torch.Tensor] = {}
    te = PREFIXES[family]["text_encoder"]
    if (family, "text_encoder") not in OPENCLIP:
        out[f"{te}embeddings.position_ids"] = torch.arange(text_positions, dtype=torch.int64)[None]
    if v_prediction:
        out[V_PRED_KEY] = torch.zeros(0)
    return out


# --------------------------------------------------------------------------------------- tensors
def to_original(entry: Entry, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The original-layout tensor of ``entry`` from its diffusers tensors (in ``entry.parts`` order)."""
    if entry.kind == "qkv":
        return torch.cat(tensors, 0)
    t = tensors[0]
    if entry.kind == "conv1x1" and t.dim() == 2:
        return t.reshape(*t.shape, 1, 1)
    if entry.kind == "transpose":
        return t.t().contiguous()
    return t


def original_shape(entry: Entry, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape ``to_original`` gives for diffusers tensors of ``shapes``."""
    if entry.kind == "qkv":
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    s = tuple(shapes[0])
    if entry.kind == "conv1x1" and len(s) == 2:
        return (*s, 1, 1)
    if entry.kind == "transpose":
        return (s[1], s[0])
    return s


def from_original(entry: Entry, t: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The diffusers tensors (``entry.parts`` order, of ``shapes``) held by the original tensor ``t``.
    A tensor stored with extra trailing 1×1 dims (conv vs linear projections) is reshaped; any other shape
    difference raises ValueError."""
    if entry.kind == "qkv":
        sizes = [s[0] for s in shapes]
        if t.shape[0] != sum(sizes):
            raise ValueError(f"{entry.key}: shape {tuple(t.shape)} does not hold q, k, v of {shapes}")
        return [p.contiguous() for p in t.split(sizes, 0)]
    if entry.kind == "transpose":
        t = t.t().contiguous()
    want = tuple(shapes[0])
    if tuple(t.shape) != want:
        if t.numel() != _numel(want) or _strip_ones(t.shape) != _strip_ones(want):
            raise ValueError(f"{entry.key}: shape {tuple(t.shape)} in the file, the model expects {want}")
        t = t.reshape(want)
    return [t]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _strip_ones(shape) -> tuple[int, ...]:
    s = list(shape)
    while len(s) > 2 and s[-1] == 1:
        s.pop()
    return tuple(s)


def alternatives(key: str) -> list[str]:
    """Other names the same tensor has in files from older tools (SD1 text encoder without ``text_model.``)."""
    for new in ("cond_stage_model.transformer.text_model.", "conditioner.embedders.0.transformer.text_model."):
        if key.startswith(new):
            return [new.removesuffix("text_model.") + key[len(new):]]
    return []


# ------------------------------------------------------------------------------------- detection
def detect_family(keys: Collection[str], shape: Callable[[str], tuple[int, ...]]) -> str | None:
    """"sdxl" (a second embedder ``conditioner.embedders.1``), "sd2" (OpenCLIP ``cond_stage_model.model.``
    or 1024-wide cross-attention), "sd1" (any other ``model.diffusion_model.`` file), else None."""
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    probe = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if probe in keys and shape(probe)[-1] == 1024:
        return "sd2"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd1"
    return None


def is_sdxl_refiner(keys: Collection[str]) -> bool:
    return any(k.startswith("conditioner.embedders.0.model.") for k in keys)


def detect_prediction(keys: Collection[str], metadata: Mapping[str, str]) -> str | None:
    """"v_prediction" or "epsilon" when the file says so: a ``v_pred`` key (ComfyUI), sdlora's metadata, or
    modelspec's prediction type / architecture; None when it does not (SD2 files usually do not)."""
    if V_PRED_KEY in keys:
        return "v_prediction"
    own = metadata.get("sdlora.prediction_type")
    if own in ("epsilon", "v_prediction"):
        return own
    spec = (metadata.get("modelspec.prediction_type") or "").lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if spec == "epsilon":
        return "epsilon"
    if (metadata.get("modelspec.architecture") or "").endswith("-v"):
        return "v_prediction"
    return None
