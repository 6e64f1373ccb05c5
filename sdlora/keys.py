"""Key names: the only place that builds or parses a key string.

A module is named by (component, path): component is "unet", "te1" (the only or first text encoder) or
"te2" (SDXL's second), and path is its dotted path in the diffusers / transformers-5 model, with text
encoder paths always relative to the CLIP text transformer (`encoder.layers.0.self_attn.q_proj`, never
`text_model.encoder...`). Files name the same module in several dialects:

    kohya, SD1/SD2   lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q
                     lora_te_text_model_encoder_layers_0_self_attn_q_proj
    kohya, SDXL      lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q  (SGM/LDM layout)
                     lora_te1_text_model_..., lora_te2_text_model_...
    LyCORIS          lycoris_down_blocks_1_... (its wrapper: "lycoris_" + named_modules() path)
    diffusers/PEFT   unet.down_blocks.1.attentions.0..., text_encoder.text_model.encoder...,
                     text_encoder_2.text_model.encoder...; a PEFT-wrapped model's own save adds
                     base_model.model. (base_model.model.down_blocks.1..., base_model.model.text_model...)
    ComfyUI          diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_v (its model's own LDM
                     keys, as its LoRA save/extract nodes write them), text encoders as
                     text_encoders.clip_l.transformer.text_model.encoder... (clip_h for SD2, clip_g for
                     SDXL's second); the loader also takes these without `text_encoders.`

A key is `<module name>.<suffix>`; `split_key` parses it, `alias_table` maps every module name a file may
use back to (component, path).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sdlora.models.families import FAMILIES, PIPELINE_NAMES, config_value as _cfg  # noqa: F401 (FAMILIES: re-exported)

COMPONENTS: tuple[str, ...] = ("unet", "te1", "te2")

# diffusers/PEFT top-level prefix of each component.
PEFT_PREFIX: dict[str, str] = PIPELINE_NAMES
# Top-level children of the CLIP text transformer: paths under these live in `text_model.` in
# transformers 4 (and in CLIPTextModelWithProjection in transformers 5). `text_projection` does not.
_TEXT_MODEL_CHILDREN = ("embeddings", "encoder", "final_layer_norm")


# ---------------------------------------------------------------------------------------------------
# module paths


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"Unknown component {component!r}; use one of {', '.join(COMPONENTS)}.")


def _in_text_model(path: str) -> bool:
    return path.split(".", 1)[0] in _TEXT_MODEL_CHILDREN


def normalize_module_path(component: str, path: str) -> str:
    """The canonical path of a module: unchanged for the UNet; for text encoders without a leading
    `text_model.` (transformers 5 CLIPTextModel has no such level, CLIPTextModelWithProjection has)."""
    _check_component(component)
    if component == "unet":
        return path
    if path == "text_model":
        return ""
    return path.removeprefix("text_model.")


def _te_full_path(path: str) -> str:
    """Text encoder path as transformers 4 writes it: `text_model.` + path for the text transformer."""
    return f"text_model.{path}" if _in_text_model(path) else path


def peft_name(component: str, path: str) -> str:
    """diffusers/PEFT module name: `unet.<path>`, `text_encoder.text_model.<path>`,
    `text_encoder_2.text_model.<path>`. Text encoder names keep `text_model.`: diffusers 0.42 strips it
    on load when the encoder lacks that level, and older diffusers/transformers need it."""
    path = normalize_module_path(component, path)
    if component != "unet":
        path = _te_full_path(path)
    return f"{PEFT_PREFIX[component]}.{path}"


# ---------------------------------------------------------------------------------------------------
# UNet: diffusers <-> SGM (original LDM) layout

# ResnetBlock2D children, diffusers -> SGM. `nonlinearity` is shared in diffusers (no SGM equivalent).
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "dropout": "out_layers.2",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_DOWN = {"conv": "op"}  # Downsample2D children
_UP = {"conv": "conv"}  # Upsample2D children
# Block kinds: how the path below a table entry is renamed; "leaf" entries have no mapped children,
# "same" entries (Transformer2DModel) keep their inner names.
_CHILDREN: dict[str, dict[str, str] | None] = {"resnet": _RESNET, "down": _DOWN, "up": _UP, "same": None}
_CHILDREN_INVERSE = {k: None if v is None else {b: a for a, b in v.items()} for k, v in _CHILDREN.items()}


def _per_block(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),) * n


def _layout_key(unet_config: Any) -> tuple:
    if unet_config is None:
        raise ValueError("The SGM (original) UNet layout needs the UNet's config; pass unet_config.")
    down = tuple(_cfg(unet_config, "down_block_types"))
    up = tuple(_cfg(unet_config, "up_block_types"))
    layers = _per_block(_cfg(unet_config, "layers_per_block", 2), len(down))
    mid = _cfg(unet_config, "mid_block_type", None) or "UNetMidBlock2DCrossAttn"
    return down, up, layers, mid


@functools.lru_cache(maxsize=16)
def _layout(key: tuple) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(diffusers prefix -> (sgm prefix, kind), sgm prefix -> (diffusers prefix, kind))."""
    down_types, up_types, layers, mid_type = key
    pairs: list[tuple[str, str, str]] = [
        ("conv_in", "input_blocks.0.0", "leaf"),
        ("time_embedding", "time_embed", "leaf"),
        ("time_embedding.linear_1", "time_embed.0", "leaf"),
        ("time_embedding.act", "time_embed.1", "leaf"),
        ("time_embedding.linear_2", "time_embed.2", "leaf"),
        ("add_embedding", "label_emb.0", "leaf"),
        ("add_embedding.linear_1", "label_emb.0.0", "leaf"),
        ("add_embedding.act", "label_emb.0.1", "leaf"),
        ("add_embedding.linear_2", "label_emb.0.2", "leaf"),
        ("conv_norm_out", "out.0", "leaf"),
        ("conv_act", "out.1", "leaf"),
        ("conv_out", "out.2", "leaf"),
        ("mid_block", "middle_block", "leaf"),
    ]
    k = 1
    for i, kind in enumerate(down_types):
        attn = "CrossAttn" in kind or kind.startswith("Attn")
        for j in range(layers[i]):
            pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", "resnet"))
            if attn:
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", "same"))
            k += 1
        if i < len(down_types) - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0", f"input_blocks.{k}.0", "down"))
            k += 1
    if "Attn" in mid_type:
        pairs += [("mid_block.resnets.0", "middle_block.0", "resnet"),
                  ("mid_block.attentions.0", "middle_block.1", "same"),
                  ("mid_block.resnets.1", "middle_block.2", "resnet")]
    else:
        pairs += [("mid_block.resnets.0", "middle_block.0", "resnet"),
                  ("mid_block.resnets.1", "middle_block.1", "resnet")]
    k = 0
    for i, (kind, n) in enumerate(zip(up_types, reversed(layers))):
        attn = "CrossAttn" in kind or kind.startswith("Attn")
        for j in range(n + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", "resnet"))
            if attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", "same"))
            if j == n and i < len(up_types) - 1:
                pairs.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{k}.{2 if attn else 1}", "up"))
            k += 1
    to_sgm = {d: (s, kind) for d, s, kind in pairs}
    to_diffusers = {s: (d, kind) for d, s, kind in pairs}
    return to_sgm, to_diffusers


def _translate(path: str, table: dict[str, tuple[str, str]], inverse: bool) -> str | None:
    """Rename `path` by its longest prefix in `table`, then its children by the block kind."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head not in table:
            continue
        target, kind = table[head]
        rest = parts[cut:]
        if not rest:
            return target
        if kind == "leaf":
            return None
        children = (_CHILDREN_INVERSE if inverse else _CHILDREN)[kind]
        if children is None:
            return ".".join([target, *rest])
        for width in (2, 1):  # SGM child names have one or two parts
            name = ".".join(rest[:width])
            if len(rest) >= width and name in children:
                return ".".join([target, children[name], *rest[width:]])
        return None
    return None


def unet_sgm_path(path: str, unet_config: Any) -> str | None:
    """The SGM/LDM (original checkpoint) path of a diffusers UNet module path, e.g.
    `down_blocks.1.attentions.0.proj_in` -> `input_blocks.4.1.proj_in` for SDXL; None for modules with
    no SGM counterpart (containers such as `down_blocks.0`, the shared resnet `nonlinearity`,
    `time_proj`). `unet_config` is the UNet's config (dict or diffusers config) or the UNet itself."""
    to_sgm, _ = _layout(_layout_key(unet_config))
    return _translate(path, to_sgm, inverse=False)


def unet_diffusers_path(sgm_path: str, unet_config: Any) -> str | None:
    """Inverse of `unet_sgm_path`: diffusers path of an SGM UNet path, None when there is none."""
    _, to_diffusers = _layout(_layout_key(unet_config))
    return _translate(sgm_path, to_diffusers, inverse=True)


# ---------------------------------------------------------------------------------------------------
# kohya names


def _kohya_te_prefix(component: str, family: str) -> str:
    if component == "te1":
        return "lora_te1_" if family == "sdxl" else "lora_te_"
    if family != "sdxl":
        raise ValueError(f"Only SDXL has a second text encoder (te2); got family {family!r}.")
    return "lora_te2_"


# ComfyUI's name of each text encoder per family (its CLIP state dict: `<clip>.transformer.text_model...`).
COMFY_CLIP: dict[str, dict[str, str]] = {"sd1": {"te1": "clip_l"}, "sd2": {"te1": "clip_h"},
                                         "sdxl": {"te1": "clip_l", "te2": "clip_g"}}
COMFY_UNET_PREFIX = "diffusion_model."
COMFY_TE_PREFIX = "text_encoders."
PEFT_MODEL_PREFIX = "base_model.model."  # a PEFT-wrapped model's state dict (PeftModel.save_pretrained)


def comfy_name(component: str, path: str, family: str, unet_config: Any = None) -> str:
    """ComfyUI's module name (what its LoRA save/extract nodes write): `diffusion_model.` + the SGM (LDM) path
    of a UNet module (needs `unet_config`); `text_encoders.<clip>.transformer.text_model.` + a text encoder
    path, with clip_l (SD1, SDXL te1), clip_h (SD2), clip_g (SDXL te2)."""
    _check_component(component)
    if family not in COMFY_CLIP:
        raise ValueError(f"Unknown model family {family!r}; use one of {', '.join(FAMILIES)}.")
    path = normalize_module_path(component, path)
    if component == "unet":
        sgm = unet_sgm_path(path, unet_config)
        if sgm is None:
            raise ValueError(f"The UNet module {path!r} has no LDM name, so ComfyUI cannot name it.")
        return COMFY_UNET_PREFIX + sgm
    clip = COMFY_CLIP[family].get(component)
    if clip is None:
        raise ValueError(f"Only SDXL has a second text encoder (te2); got family {family!r}.")
    return f"{COMFY_TE_PREFIX}{clip}.transformer.{_te_full_path(path)}"


def comfy_te2(name: str) -> bool:
    """Whether a module name is ComfyUI's name of SDXL's second text encoder (clip_g)."""
    return name.removeprefix(COMFY_TE_PREFIX).startswith(COMFY_CLIP["sdxl"]["te2"] + ".")


# Where kohya's own LoRA (networks.lora) puts modules: the UNet's Transformer2DModel blocks and (with conv_dim) its
# ResnetBlock2D / Downsample2D / Upsample2D blocks, the text encoders' CLIPAttention and CLIPMLP. Anything else
# (conv_in, conv_out, time/add embeddings, norms, embeddings) is "no module found" there.
_KOHYA_UNET_BLOCKS = re.compile(r"^(down_blocks\.\d+\.(attentions|resnets|downsamplers)|mid_block\.(attentions|resnets)"
                                r"|up_blocks\.\d+\.(attentions|resnets|upsamplers))\.\d+\.")
_KOHYA_TE_BLOCKS = re.compile(r"^encoder\.layers\.\d+\.(self_attn|mlp)\.")


def kohya_network_covers(component: str, path: str) -> bool:
    """Whether kohya's own LoRA network (sd-scripts networks/lora.py, which A1111 and kohya's merge/resize also
    follow) has a module at (component, path); modules outside it need the LyCORIS loader."""
    path = normalize_module_path(component, path)
    pattern = _KOHYA_UNET_BLOCKS if component == "unet" else _KOHYA_TE_BLOCKS
    return pattern.match(path) is not None


_KOHYA_OUTSIDE = re.compile(
    r"^(lora_unet_|lycoris_|unet\.|diffusion_model\.|base_model\.model\.)?"
    r"(conv_in|conv_out|time_embed|time_embedding|add_embedding|label_emb|input_blocks[._]0[._]0|out[._]2)([._]|$)"
    r"|^(lora_te[12]?_|text_encoders?(_2)?\.|(clip_[lhg]\.transformer\.))?(text_model[._])?"
    r"(embeddings|final_layer_norm|text_projection)([._]|$)")


def outside_kohya_network(name: str) -> bool:
    """Whether a module name as written in a file (any dialect) names a layer kohya's own LoRA network has no
    module for (conv_in, conv_out, time/add embeddings, text embeddings / final norm / projection)."""
    return _KOHYA_OUTSIDE.match(name.removeprefix(COMFY_TE_PREFIX)) is not None


def kohya_name(component: str, path: str, family: str, unet_config: Any = None) -> str:
    """The kohya module name: `lora_unet_` + diffusers path (SD1/SD2) or SGM path (SDXL, needs
    `unet_config`), `lora_te_`/`lora_te1_`/`lora_te2_` + `text_model_` + text encoder path; `.` -> `_`."""
    _check_component(component)
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; use one of {', '.join(FAMILIES)}.")
    path = normalize_module_path(component, path)
    if component == "unet":
        if family == "sdxl":
            sgm = unet_sgm_path(path, unet_config)
            if sgm is None:
                raise ValueError(f"The UNet module {path!r} has no SGM name, so kohya cannot name it for SDXL.")
            path = sgm
        return "lora_unet_" + path.replace(".", "_")
    return _kohya_te_prefix(component, family) + _te_full_path(path).replace(".", "_")


def alias_table(
    modules: Mapping[str, Iterable[str]], family: str, unet_config: Any = None
) -> dict[str, tuple[str, str]]:
    """Every module name a file may use -> (component, canonical path), for the given module paths per
    component (e.g. {"unet": [...], "te1": [...]}, paths as in named_modules(); `unet_config` is needed
    for the SGM names). Aliases, with `u` = path with `.` -> `_`:

    unet: lora_unet_<u>, lora_unet_<sgm u>, lycoris_<u>, lycoris_<sgm u>, unet.<path>, <path>,
          diffusion_model.<sgm path> (ComfyUI), base_model.model.<path> (a PEFT-wrapped UNet)
    te1:  lora_te_ / lora_te1_ + [text_model_]<u>, text_encoder.[text_model.]<path>,
          [text_encoders.]<clip>.transformer.text_model.<path> (ComfyUI; clip_l, or clip_h for SD2),
          and lycoris_[text_model_]<u>, base_model.model.[text_model.]<path> when there is no te2 (those
          names do not say which encoder)
    te2:  lora_te2_[text_model_]<u>, text_encoder_2.[text_model.]<path>,
          [text_encoders.]clip_g.transformer.text_model.<path>
    Raises ValueError if two modules would share an alias (a bug, not a user error)."""
    table: dict[str, tuple[str, str]] = {}

    def add(alias: str, target: tuple[str, str]) -> None:
        if table.setdefault(alias, target) != target:
            raise ValueError(f"Alias {alias!r} names both {table[alias]} and {target}.")

    te1_lycoris = "te2" not in modules
    for component, paths in modules.items():
        _check_component(component)
        for raw in paths:
            path = normalize_module_path(component, raw)
            target = (component, path)
            u = path.replace(".", "_")
            if component == "unet":
                names = [u]
                sgm = unet_sgm_path(path, unet_config) if unet_config is not None else None
                if sgm is not None:
                    names.append(sgm.replace(".", "_"))
                for name in names:
                    add("lora_unet_" + name, target)
                    add("lycoris_" + name, target)
                if sgm is not None:
                    add(COMFY_UNET_PREFIX + sgm, target)
                add("unet." + path, target)
                add(PEFT_MODEL_PREFIX + path, target)
                add(path, target)  # diffusers' old save_attn_procs files name UNet modules without a prefix
                continue
            full = _te_full_path(path)
            kohya = ("lora_te_", "lora_te1_") if component == "te1" else ("lora_te2_",)
            for prefix in kohya:
                add(prefix + full.replace(".", "_"), target)
                add(prefix + u, target)
            if component == "te1" and te1_lycoris:
                add("lycoris_" + full.replace(".", "_"), target)
                add("lycoris_" + u, target)
                add(PEFT_MODEL_PREFIX + full, target)
                add(PEFT_MODEL_PREFIX + path, target)
            clip = COMFY_CLIP.get(family, {}).get(component)
            if clip is not None:
                add(f"{COMFY_TE_PREFIX}{clip}.transformer.{full}", target)
                add(f"{clip}.transformer.{full}", target)
            add(f"{PEFT_PREFIX[component]}.{full}", target)
            add(f"{PEFT_PREFIX[component]}.{path}", target)
    return table


# ---------------------------------------------------------------------------------------------------
# tensor keys

# Suffix as written in a file -> kohya's canonical suffix. Matched after a ".", longest first.
SUFFIXES: dict[str, str] = {
    # LoRA / LoCon (kohya, LyCORIS)
    "lora_down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "lora_mid.weight": "lora_mid.weight",
    "alpha": "alpha",
    # PEFT / diffusers
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    # DoRA
    "dora_scale": "dora_scale",
    "lora_magnitude_vector": "dora_scale",
    "lora_magnitude_vector.weight": "dora_scale",
    # LoHa
    **{s: s for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")},
    # LoKr
    **{s: s for s in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")},
    # full / norm / misc LyCORIS
    **{s: s for s in ("diff", "diff_b", "w_norm", "b_norm", "scale", "on_input")},
}
_BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)
# Canonical suffixes other modules test for by name.
LORA_DOWN, LORA_MID, DORA_SCALE, DIFF_B = "lora_down.weight", "lora_mid.weight", "dora_scale", "diff_b"


def is_peft_magnitude(key: str) -> bool:
    """True for a PEFT DoRA magnitude key (`...lora_magnitude_vector[.weight]`): stored per output."""
    return "lora_magnitude_vector" in key

# Old diffusers attention-processor form: `<attn>.processor.to_q_lora.down.weight` (UNet) and
# `<layer>.self_attn.to_q_lora.down.weight` (text encoder, no `processor`).
_OLD_PROCESSOR = re.compile(
    r"^(?P<base>.+?)(?P<processor>\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora"
    r"\.(?P<suffix>down\.weight|up\.weight|alpha)$"
)
_OLD_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_OLD_TE = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_OLD_SUFFIX = {"down.weight": "lora_down.weight", "up.weight": "lora_up.weight", "alpha": "alpha"}


def split_key(key: str) -> tuple[str, str]:
    """(module name, canonical suffix) of a tensor key in any dialect; the module name is returned as
    written (dotted or underscored, with its prefix), except that the old attention-processor form
    names the real module (`attn1.processor.to_out_lora` -> `attn1.to_out.0`,
    `self_attn.to_q_lora` -> `self_attn.q_proj`). Suffixes become kohya's (`lora_A.weight` ->
    `lora_down.weight`, `lora_magnitude_vector` -> `dora_scale`, ...).
    A key with no known suffix gives (key, ""): the caller reports it as unmatched."""
    old = _OLD_PROCESSOR.match(key)
    if old is not None:
        base = old["base"]
        names = _OLD_TE if base.endswith("self_attn") and old["processor"] is None else _OLD_UNET
        return f"{base}.{names[old['proj']]}", _OLD_SUFFIX[old["suffix"]]
    for suffix in _BY_LENGTH:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], SUFFIXES[suffix]
    return key, ""


# ---------------------------------------------------------------------------------------------------
# a module name's dialect and component by prefix; PEFT's tensor names

LYCORIS_PREFIX = "lycoris_"
# kohya's canonical suffix -> the name a diffusers/PEFT file gives it (plain LoRA/LoCon and DoRA only).
PEFT_SUFFIX: dict[str, str] = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight",
                               "dora_scale": "lora_magnitude_vector"}


def name_dialect(name: str) -> str:
    """"lycoris", "kohya" or "peft": the naming dialect of a module name as written (prefix test only)."""
    if name.startswith(LYCORIS_PREFIX):
        return "lycoris"
    return "kohya" if name.startswith("lora_") else "peft"


def component_of_name(name: str) -> str:
    """"te2", "te1" or "unet": the component of a module name as written (prefix test only)."""
    if name.startswith(("lora_te2_", PEFT_PREFIX["te2"] + ".")) or comfy_te2(name):
        return "te2"
    if name.startswith(("lora_te", PEFT_PREFIX["te1"] + ".")) or "text_model" in name:
        return "te1"
    return "unet"
