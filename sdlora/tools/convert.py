"""`convert`: rename an adapter's keys into another dialect, carrying every tensor unchanged (bit for bit).

Formats:
  kohya    lora_unet_… / lora_te_… / lora_te1_… / lora_te2_… names; any algorithm (this is also the form of
           LyCORIS's kohya wrapper and what A1111/Forge/ComfyUI load). ``unet_names`` picks the UNet's
           SGM (input_blocks_…, SDXL's standard) or diffusers (down_blocks_…, SD1/SD2's) names.
  lycoris  lycoris_ + the layer's module path: LyCORIS's own wrapper (create_lycoris_from_weights on the
           UNet or the text encoder); any algorithm; cannot name SDXL's two text encoders apart.
  peft     unet.… / text_encoder.… with lora_A / lora_B (diffusers' load_lora_weights, PEFT); plain
           LoRA/LoCon only, DoRA as lora_magnitude_vector (out,); alpha goes to diffusers'
           lora_adapter_metadata (per module via alpha_pattern) and comes back from it.
  comfy    ComfyUI's own names (what its LoRA save/extract nodes write): diffusion_model. + the UNet's LDM
           path, text_encoders.clip_l|clip_h|clip_g.transformer.text_model.…; any algorithm.
A file the target cannot hold is refused before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sdlora import keys
from sdlora.adapters import build_metadata, peft_metadata
from sdlora.adapters.write import peft_module_tensors
from sdlora.files import tensors as files
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.networks import AdapterModule, Network
from sdlora.networks.lora import LoRAModule
from sdlora.tools.delta import tool_module, dora_shape
from sdlora.tools.output import check_dialect, output_name, peft_cannot_hold
from sdlora.tools.reference import ModelLike
from sdlora.tools.report import Report
from sdlora.tools.sources import dialect_of, read_source

_DROP = ("sshs_model_hash", "sshs_legacy_hash", "lora_adapter_metadata", "format")


def convert(path: str | Path, out: str | Path, *, to: str, unet_names: str | None = None,
            model: ModelLike = None, family: str | None = None, dora_columns: bool = False) -> Report:
    """Write ``path``'s adapter to ``out`` in the ``to`` format (kohya, lycoris, peft, comfy); tensors unchanged,
    except with ``dora_columns``: row-shaped DoRA magnitudes become the column-shaped ones A1111 applies on the
    right axis (``column_magnitudes``; needs the base model's weights, the fit is reported).

    Raises AdapterFileError, writing nothing, when the target cannot hold a module (e.g. LoHa to peft)."""
    check_dialect(to, unet_names)
    if unet_names is not None and to != "kohya":
        raise ConfigError("--unet-names chooses kohya's UNet names; it applies to --to kohya only")
    src = read_source(path, family, model)
    ref = src.ref
    fits = column_magnitudes(src, model) if dora_columns else []
    style = unet_names or src.unet_names
    names = {key: output_name(key, ref, to, style) for key in src.modules}
    modules = {key: tool_module(ref.layer(key), t, f"{src.path}: {src.names[key]}") for key, t in src.modules.items()}
    if to == "peft":
        refused = [(src.names[k], why) for k, m in modules.items() if (why := peft_cannot_hold(m))]
        if refused:
            raise AdapterFileError(f"{src.path}: the diffusers/PEFT format cannot hold {len(refused)} of its modules "
                                   f"(e.g. {refused[0][0]}: {refused[0][1]}); convert to kohya or lycoris instead")
    tensors: dict[str, torch.Tensor] = {}
    for key, t in src.modules.items():
        name = names[key]
        if to == "peft":
            for suffix, value in peft_module_tensors(t, modules[key].kind == "linear").items():
                tensors[f"{name}.{suffix}"] = value
            continue
        from_peft = dialect_of(src.names[key]) == "peft"
        for suffix, value in t.items():
            if suffix == AdapterModule.dora_suffix and value.dim() == 1:  # PEFT's (out,) -> kohya's (out, 1[, 1, 1])
                value = value.reshape(dora_shape(value, ref.layer(key).weight))
            if suffix == "alpha" and from_peft:  # from the metadata: stored like the weights, as kohya does
                value = value.to(t[LoRAModule.file_suffixes[0]].dtype)
            tensors[f"{name}.{suffix}"] = value
    network = Network(ref.models, {(k[0], ref.raw_path(k)): m for k, m in modules.items()})
    meta = {k: v for k, v in src.file.metadata.items() if k not in _DROP}
    if to == "peft":
        meta.update(peft_metadata(network))
    else:
        fresh = build_metadata(network, ref.family, name=meta.get("ss_output_name") or Path(out).stem)
        for k, v in fresh.items():
            meta.setdefault(k, v)
        meta["ss_network_module"] = fresh["ss_network_module"]  # which loader can read it (A1111/kohya route by it)
    files.write_tensors(out, tensors, meta, hashes=to != "peft")
    report = Report(f"convert ({src.dialect} -> {to})", str(out), len(modules))
    if fits:
        report.notes.append(f"dora columns: {len(fits)} magnitudes made column-shaped for A1111; W' at strength 1 "
                            f"within {max(fits):.2%} of sdlora's (relative, worst module)")
    renamed = sum(names[k] != src.names[k] for k in names)
    report.notes.append(f"lossless: {len(tensors)} tensors carried unchanged; {renamed} of {len(names)} module "
                        "names changed")
    return report


def column_magnitudes(src, model: ModelLike) -> list[float]:
    """Replace each row-shaped DoRA magnitude m (out, 1[, 1, 1]) in ``src.modules`` by a column-shaped one
    (1, in[, 1, 1]): with W* = W_d·m/‖W_d‖_row sdlora's W' at strength 1 (W_d = W + ΔW), c the least-squares
    column scale of W_d towards W* and m_c = c·‖W_d‖_col, A1111 (column norms always) gives W_d·m_c/‖W_d‖_col =
    W_d·c, the nearest column-scaled form of W* (a row scaling is not a column scaling: it is exact only where
    the magnitudes are uniform). Returns each module's relative
    ‖W'_A1111 − W*‖ / ‖W*‖ at strength 1. Needs the base weights: ``model`` must be given."""
    if model is None:
        raise ConfigError("--dora-columns needs the base model's weights (W enters the norms): pass --model")
    errors = []
    for key, t in src.modules.items():
        mag = t.get(keys.DORA_SCALE)
        layer = src.ref.layer(key)
        if mag is None or mag.shape[0] != layer.weight.shape[0] or (mag.dim() >= 2 and mag.shape[1] != 1):
            continue  # no DoRA, or already column-shaped
        module = tool_module(layer, t, f"{src.path}: {src.names[key]}")
        w = layer.weight.detach().float()
        with torch.no_grad():
            target = module.merged_weight(w, 1.0)
            wd = w + module.delta_weight().float()
        cols_t, cols_d = target.transpose(0, 1).reshape(w.shape[1], -1), wd.transpose(0, 1).reshape(w.shape[1], -1)
        shape = (1, w.shape[1], *[1] * (w.dim() - 2))
        best = ((cols_t * cols_d).sum(dim=1) / cols_d.pow(2).sum(dim=1)).reshape(shape)  # least-squares c per column
        col = best * cols_d.norm(dim=1).reshape(shape)  # A1111 divides by ‖W_d‖_col: store c·‖W_d‖_col
        got = wd * best
        errors.append(float((got - target).norm() / target.norm()))
        t[keys.DORA_SCALE] = col.to(mag.dtype)
    return errors
