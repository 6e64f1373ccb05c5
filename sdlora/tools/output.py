"""Writing the tools' outputs: LoRA modules fitted to a Delta, module names per dialect, and the one
file writer (recomputed metadata, carried training facts)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from sdlora import keys
from sdlora.files import tensors as files
from sdlora.adapters import adapter_tensors, build_metadata, peft_metadata
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.networks import AdapterModule, Network
from sdlora.networks.full import FullModule, NormModule
from sdlora.networks.lora import LoRAModule
from sdlora.tools.delta import Delta, dora_shape
from sdlora.tools.reference import Key, Reference
from sdlora.tools.report import ModuleFit
from sdlora.tools.sources import UNET_NAMES, kohya_unet_name
from sdlora.tools.svd import svd_factors

DIALECTS = ("kohya", "lycoris", "peft", "comfy")
# Metadata keys that describe the network itself: recomputed for every written file.
_NETWORK_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                 "modelspec.architecture", "sshs_model_hash", "sshs_legacy_hash", "lora_adapter_metadata",
                 "format")



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
    down_key, up_key = LoRAModule.file_suffixes
    tensors = {down_key: down.to(dtype), up_key: up.to(dtype), "alpha": torch.tensor(gamma * r, dtype=torch.float32)}
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



def output_name(key: Key, ref: Reference, dialect: str, unet_names: str | None) -> str:
    """The module name ``key`` gets in a file of ``dialect``.

    kohya:   lora_unet_… (``unet_names`` sgm/diffusers; default SGM for SDXL, diffusers otherwise),
             lora_te_/lora_te1_/lora_te2_text_model_…
    lycoris: "lycoris_" + the layer's named_modules path (LyCORIS's own wrapper, one model per name space)
    peft:    unet.… / text_encoder.text_model.… / text_encoder_2.text_model.…
    comfy:   diffusion_model.<LDM path> / text_encoders.clip_l|clip_h|clip_g.transformer.text_model.…
    """
    component, path = key
    if dialect == "peft":
        return keys.peft_name(component, path)
    if dialect == "comfy":
        try:
            return keys.comfy_name(component, path, ref.family, ref.unet_config)
        except ValueError as exc:
            raise AdapterFileError(f"{exc} Convert to kohya instead") from None
    if dialect == "lycoris":
        if component == "te2" or (component == "te1" and "te2" in ref.models):
            raise AdapterFileError("LyCORIS's own names cannot tell SDXL's two text encoders apart; "
                                   "convert to kohya instead")
        name = keys.LYCORIS_PREFIX + ref.raw_path(key).replace(".", "_")
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
    fresh = build_metadata(network, ref.family, name=meta.get("ss_output_name") or Path(out).stem,
                           v_prediction=v_prediction)
    for k, v in fresh.items():
        if k in _NETWORK_KEYS or k not in meta:
            meta[k] = v
    meta.update(extra or {})
    return files.write_tensors(out, tensors, meta, dtype=dtype, hashes=True)


def output_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    return files.parse_dtype(dtype) or default



def peft_cannot_hold(module: AdapterModule) -> str | None:
    """Why the diffusers/PEFT format cannot hold ``module`` (None when it can): PEFT holds plain LoRA/LoCon
    with an optional row-norm DoRA magnitude (lora_magnitude_vector, (out,))."""
    if not isinstance(module, LoRAModule):
        return f"a {module.algo} module (only LoRA/LoCon)"
    if module.tucker:
        return "a Tucker LoCon (it has a mid factor)"
    if module.diff_b is not None:
        return "a bias delta (diff_b)"
    mag = module.dora_scale
    if mag is not None and (mag.shape[0] != module.shape[0] or mag.numel() != module.shape[0]):
        return "a column-norm DoRA magnitude (older DoRA files)"
    return None

