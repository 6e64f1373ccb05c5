"""Opening one original-layout file: the plan (family, configs, prediction type, skeletons built on the
meta device, the key layout) and the state dicts read tensor by tensor from the lazy file, so opening
holds one copy of the weights."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from sdlora.errors import ModelError
from sdlora.files import streaming
from sdlora.models import checkpoint, configs, tokenizers
from sdlora.models.families import FAMILY_NAMES
from sdlora.models.base import BaseModel, SHIPPED, _TE_CLASSES, check_family, check_prediction
from sdlora.models.assemble import _assemble, probe_v_prediction


@dataclass
class SingleFilePlan:
    """What a single file holds and how to read it into diffusers models."""

    file: streaming.LazyFile
    family: str
    prediction_type: str | None  # None: the file does not say
    configs: dict[str, dict]
    config_source: str  # "user", "embedded" or the shipped config name
    skeletons: dict[str, nn.Module]  # meta-device models: "unet", "vae", "text_encoder"[, "text_encoder_2"]
    entries: list[checkpoint.Entry]

    def shapes(self, component: str) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.skeletons[component].state_dict().items()}


def read_config_folder(folder: Path) -> dict[str, dict]:
    """{"unet", "vae", "text_encoder"[, "text_encoder_2"], "scheduler"[, "pipeline"]} configs of a
    diffusers-layout folder."""
    out: dict[str, dict] = {}
    for name in checkpoint.COMPONENTS:
        f = folder / name / "config.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
    f = folder / "scheduler" / "scheduler_config.json"
    if f.is_file():
        out["scheduler"] = json.loads(f.read_text())
    index = folder / "model_index.json"
    if index.is_file():
        idx = json.loads(index.read_text())
        if "force_zeros_for_empty_prompt" in idx:
            out["pipeline"] = {"force_zeros_for_empty_prompt": idx["force_zeros_for_empty_prompt"]}
    for need in ("unet", "vae", "text_encoder"):
        if need not in out:
            raise ModelError(f"{folder}: config folder has no {need}/config.json; give a diffusers-layout "
                             f"config folder or one of {', '.join(configs.config_names())}")
    return out


def _resolve_configs(file: streaming.LazyFile, family: str, prediction: str | None,
                     config: str | Path | None) -> tuple[dict[str, dict], str]:
    if config is not None:
        folder = configs.config_dir(str(config)) if str(config) in configs.KNOWN else Path(config).expanduser()
        if not folder.is_dir():
            raise ModelError(f"{config}: no such config folder; give a diffusers-layout folder or one of "
                             f"{', '.join(configs.config_names())}")
        return read_config_folder(folder), "user"
    embedded = file.metadata.get("sdlora.configs")
    if embedded:
        try:
            return json.loads(embedded), "embedded"
        except ValueError:
            pass
    name = "sd21" if family == "sd2" and prediction == "v_prediction" else SHIPPED[family]
    return read_config_folder(configs.config_dir(name)), name


def build_skeletons(family: str, cfgs: dict[str, dict]) -> dict[str, nn.Module]:
    """The pipeline's models from their configs on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te_classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    out: dict[str, nn.Module] = {}
    with init_empty_weights():
        for name in names:
            cfg = cfgs.get(name)
            if cfg is None:
                raise ModelError(f"no {name} config for this {FAMILY_NAMES[family]} model; pass --config DIR")
            if name == "unet":
                out[name] = UNet2DConditionModel.from_config(cfg)
            elif name == "vae":
                out[name] = AutoencoderKL.from_config(cfg)
            else:
                arch = (cfg.get("architectures") or [_TE_CLASSES[name]])[0]
                cls = te_classes.get(arch, te_classes[_TE_CLASSES[name]])
                te_cfg = {k: v for k, v in cfg.items() if k != "architectures"}
                out[name] = cls(CLIPTextConfig.from_dict(te_cfg))
    for m in out.values():
        m.eval()
    return out


def layout_for(family: str, skeletons: dict[str, nn.Module]) -> list[checkpoint.Entry]:
    """The single-file entries of ``family`` for these models (live or meta)."""
    keys = {name: list(m.state_dict().keys()) for name, m in skeletons.items()}
    return checkpoint.layout(family, keys, skeletons["unet"].config, len(skeletons["vae"].config.up_block_types))


def plan_single_file(path: str | Path, *, family: str | None = None, prediction_type: str | None = None,
                     config: str | Path | None = None) -> SingleFilePlan:
    """Read a single file's header and decide how to open it (family, configs, layout); no weights read."""
    path = Path(path)
    file = streaming.LazyFile(path)
    if checkpoint.is_sdxl_refiner(file.keys) and family is None:
        raise ModelError(f"{path}: this is an SDXL refiner checkpoint; sdlora opens SD 1.x, SD 2.x and SDXL "
                         "base models")
    detected = checkpoint.detect_family(file.keys, file.shape)
    fam = check_family(family) or detected
    if fam is None:
        raise ModelError(f"{path}: unknown model family: the file has no {checkpoint.PREFIXES['sd1']['unet']}* keys, so it "
                         "is not an SD 1.x / SD 2.x / SDXL checkpoint. If it is one in another layout, use its "
                         "diffusers folder, or pass --family sd1|sd2|sdxl")
    pred = check_prediction(prediction_type) or checkpoint.detect_prediction(file.keys, file.metadata)
    cfgs, source = _resolve_configs(file, fam, pred, config)
    skeletons = build_skeletons(fam, cfgs)
    return SingleFilePlan(file, fam, pred, cfgs, source, skeletons, layout_for(fam, skeletons))


def read_entry(plan: SingleFilePlan, entry: checkpoint.Entry, shapes: dict[str, tuple[int, ...]]
               ) -> list[torch.Tensor] | None:
    """The diffusers tensors of one entry read from the plan's file; None when the file lacks it."""
    for key in [entry.key, *checkpoint.alternatives(entry.key)]:
        if key in plan.file:
            return checkpoint.from_original(entry, plan.file.get(key), [shapes[p] for p in entry.parts])
    return None


def load_state_dicts(plan: SingleFilePlan, dtype: torch.dtype | None = None,
                     components: tuple[str, ...] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{component: diffusers state dict} read from the plan's file. Raises ModelError naming a missing
    component, missing tensors or shapes that do not fit the configs."""
    wanted = components or tuple(plan.skeletons)
    shapes = {c: plan.shapes(c) for c in wanted}
    out: dict[str, dict[str, torch.Tensor]] = {c: {} for c in wanted}
    missing: dict[str, list[str]] = {c: [] for c in wanted}
    total: dict[str, int] = {c: 0 for c in wanted}
    bad: list[str] = []
    for entry in plan.entries:
        if entry.component not in wanted:
            continue
        total[entry.component] += 1
        try:
            tensors = read_entry(plan, entry, shapes[entry.component])
        except ValueError as exc:
            bad.append(str(exc))
            continue
        if tensors is None:
            missing[entry.component].append(entry.key)
            continue
        for part, t in zip(entry.parts, tensors):
            out[entry.component][part] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    raise_missing(plan, missing, total, bad)
    return out


def raise_missing(plan: SingleFilePlan, missing: dict[str, list[str]], total: dict[str, int],
                   bad: list[str]) -> None:
    where = f"{plan.file.path}"
    fam = FAMILY_NAMES[plan.family]
    for c, keys in missing.items():
        if keys and len(keys) == total[c]:
            prefix = checkpoint.PREFIXES[plan.family][c]
            raise ModelError(f"{where}: the file holds no {checkpoint.NAMES[c]} (no {prefix}* keys), so it is "
                             f"not a complete {fam} checkpoint. Use a full checkpoint or a diffusers folder, or "
                             "pass --family if the family was detected wrongly")
    for c, keys in missing.items():
        if keys:
            raise ModelError(f"{where}: {len(keys)} of {total[c]} {checkpoint.NAMES[c]} tensors are missing "
                             f"(e.g. {', '.join(keys[:3])}): the file is truncated or not an {fam} model of "
                             f"this shape (configs: {plan.config_source}); pass --family or --config DIR")
    if bad:
        raise ModelError(f"{where}: {len(bad)} tensors do not fit the {plan.config_source} configs (e.g. "
                         f"{bad[0]}); this checkpoint has another architecture: pass --config DIR with its "
                         "diffusers config folder")


def _open_single_file(path: Path, family: str | None, prediction_type: str | None, dtype: torch.dtype | None,
                      tokenizer: str | Path | None, config: str | Path | None) -> BaseModel:
    plan = plan_single_file(path, family=family, prediction_type=prediction_type, config=config)
    te_positions = int(plan.skeletons["text_encoder"].config.max_position_embeddings)
    vocab = [int(m.config.vocab_size) for n, m in plan.skeletons.items() if n.startswith("text_encoder")]
    toks = tokenizers.find_tokenizers(plan.family, tokenizer, what=f"{path.name} ({FAMILY_NAMES[plan.family]})",
                                      max_length=te_positions, vocab_sizes=vocab)
    states = load_state_dicts(plan, dtype)
    models = plan.skeletons
    for name, model in models.items():
        model.load_state_dict(states.pop(name), strict=True, assign=True)
    pred = plan.prediction_type
    if pred is None and plan.config_source == "user":
        pred = plan.configs.get("scheduler", {}).get("prediction_type")
    if pred is None and plan.family == "sd2":
        pred = "v_prediction" if probe_v_prediction(models["unet"]) else "epsilon"
        if pred == "v_prediction" and plan.config_source == SHIPPED["sd2"]:
            models["unet"].register_to_config(sample_size=read_config_folder(configs.config_dir("sd21"))["unet"]
                                              ["sample_size"])
    pred = pred or "epsilon"
    pipe = _assemble(plan.family, models, toks, plan.configs, pred)
    used = {e.key for e in plan.entries} | {k for e in plan.entries for k in checkpoint.alternatives(e.key)}
    used |= set(checkpoint.extra_tensors(plan.family, te_positions, True))
    ignored = [k for k in plan.file.keys if k not in used]
    return BaseModel(pipe=pipe, family=plan.family, prediction_type=pred, source=str(path), ignored_keys=ignored)
