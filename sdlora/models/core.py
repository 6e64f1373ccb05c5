"""Base models: open SD 1.x / SD 2.x / SDXL offline, say what they are, save them.

``open_model(path)`` returns a ``BaseModel``: the diffusers pipeline plus its family ("sd1", "sd2",
"sdxl") and prediction type, and the adaptable components by the names the rest of sdlora uses
("unet", "te1", "te2"). ``path`` is a diffusers folder or a single original-layout ``.safetensors`` file.

Opening a single file, fully offline:
- family from the keys (``checkpoint.detect_family``), or the caller's ``family``;
- configs: the caller's ``config`` (a shipped name or a diffusers-layout folder), else the configs sdlora
  embeds in files it writes (``sdlora.configs`` metadata), else the shipped ones (sd15, sd2-base / sd21,
  sdxl — see ``sdlora.configs``);
- prediction type: the caller's ``prediction_type``; else the file's own signal (a ``v_pred`` key as
  ComfyUI writes, or modelspec / sdlora metadata); else, for SD2 only, A1111's probe (the UNet at t=999 on a
  constant input: a mean output below -1 means v-prediction) — a heuristic, which is why the override
  exists; else "epsilon";
- tokenizer: ``sdlora.tokenizers.find_tokenizers`` (the caller's folder or the local HF cache).
Weights are read tensor by tensor into models built on the meta device, so opening holds one copy.

``save_model`` writes a model as a diffusers folder or as one original-layout file (fp32/fp16/bf16),
streaming one tensor at a time, atomically.
"""
from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sdlora import __version__
from sdlora.models import checkpoint
from sdlora.models import configs
from sdlora.files import tensors as files
from sdlora.files import streaming
from sdlora.models import tokenizers
from sdlora.errors import ModelError
from sdlora.models.families import FAMILIES, FAMILY_NAMES, modelspec_architecture
from sdlora.files.tensors import parse_dtype

PREDICTIONS = ("epsilon", "v_prediction")
FORMATS = ("single-file", "diffusers")
SHIPPED = {"sd1": "sd15", "sd2": "sd2-base", "sdxl": "sdxl"}  # sd2 v-prediction: sd21
_TE_CLASSES = {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}


@dataclass
class BaseModel:
    """A diffusers pipeline with what sdlora needs to know about it."""

    pipe: Any  # StableDiffusionPipeline | StableDiffusionXLPipeline
    family: str
    prediction_type: str = "epsilon"
    source: str = ""
    ignored_keys: list[str] = field(default_factory=list)  # keys of a single file that held nothing used
    stack: Any = None  # the AdapterStack on this model, set by AdapterStack(model)
    base_scheduler: dict = field(default_factory=dict, repr=False)  # the model's own scheduler config
    _hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.base_scheduler:
            self.base_scheduler = {k: v for k, v in dict(self.pipe.scheduler.config).items()
                                   if not k.startswith("_")}
            self.base_scheduler["_class_name"] = type(self.pipe.scheduler).__name__

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet

    @property
    def vae(self) -> nn.Module:
        return self.pipe.vae

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [m for m in (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)) if m is not None]

    @property
    def tokenizers(self) -> list[Any]:
        return [t for t in (self.pipe.tokenizer, getattr(self.pipe, "tokenizer_2", None)) if t is not None]

    def components(self) -> dict[str, nn.Module]:
        """{"unet": ..., "te1": ..., ["te2": ...]}: the modules adapters attach to."""
        out = {"unet": self.pipe.unet}
        encoders = self.text_encoders
        if encoders:
            out["te1"] = encoders[0]
        if len(encoders) > 1:
            out["te2"] = encoders[1]
        return out

    def pipeline_components(self) -> dict[str, nn.Module]:
        """{"unet", "vae", "text_encoder"[, "text_encoder_2"]}: the modules a checkpoint holds."""
        names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if self.family == "sdxl" else [])
        return {n: getattr(self.pipe, n) for n in names}

    @property
    def v_prediction(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def latent_scale(self) -> float:
        return float(getattr(self.pipe.vae.config, "scaling_factor", 0.18215))

    @property
    def name(self) -> str:
        """The model's name as A1111 shows it: the file or folder name without extension."""
        return Path(self.source).stem if self.source else "model"

    @property
    def default_size(self) -> int:
        """The native image side in pixels (UNet sample size × VAE scale factor)."""
        return int(self.unet.config.sample_size) * int(getattr(self.pipe, "vae_scale_factor", 8))

    def model_hash(self) -> str:
        """A1111's short model hash (first 10 hex of the file's sha256) for a single-file model; "" else.
        Computed once."""
        if self._hash is None:
            path = Path(self.source)
            self._hash = files.file_sha256(path)[:10] if path.is_file() else ""
        return self._hash

    def configs(self) -> dict[str, dict]:
        """JSON-able configs of every component, the scheduler and the pipeline: what a single file
        needs besides its weights to be rebuilt exactly."""
        out = {n: _config_dict(m) for n, m in self.pipeline_components().items()}
        out["scheduler"] = json.loads(json.dumps(dict(self.base_scheduler, prediction_type=self.prediction_type),
                                                 default=str))
        if self.family == "sdxl":
            out["pipeline"] = {"force_zeros_for_empty_prompt":
                               bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", True))}
        return out


def _config_dict(module: nn.Module) -> dict:
    cfg = module.config
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    d = {k: v for k, v in d.items() if not k.startswith("_") and k not in ("transformers_version", "dtype",
                                                                           "torch_dtype")}
    return json.loads(json.dumps(d, default=str))


def check_family(family: str | None) -> str | None:
    if family is not None and family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    return family


def check_prediction(prediction_type: str | None) -> str | None:
    if prediction_type in (None, ""):
        return None
    value = {"v": "v_prediction", "eps": "epsilon"}.get(prediction_type, prediction_type)
    if value not in PREDICTIONS:
        raise ModelError(f"unknown prediction type {prediction_type!r}; use epsilon or v_prediction (v)")
    return value


def detect_family(unet_config: Any, text_encoder_2: Any = None) -> str:
    """"sdxl" for a UNet with text_time added conditioning (or a second encoder), "sd2" for a UNet with
    linear projections or 1024-wide cross-attention, else "sd1"."""
    get = (lambda k, d=None: unet_config.get(k, d)) if isinstance(unet_config, dict) else \
        (lambda k, d=None: getattr(unet_config, k, d))
    if get("addition_embed_type") == "text_time" or text_encoder_2 is not None:
        return "sdxl"
    if get("use_linear_projection") or get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def from_pipeline(pipe: Any, family: str | None = None, prediction_type: str | None = None,
                  source: str = "") -> BaseModel:
    """Wrap an already-built diffusers pipeline."""
    fam = check_family(family) or detect_family(pipe.unet.config, getattr(pipe, "text_encoder_2", None))
    prediction_type = check_prediction(prediction_type)
    pred = prediction_type or getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    if prediction_type:
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    return BaseModel(pipe=pipe, family=fam, prediction_type=pred, source=source)


# ------------------------------------------------------------------------------------------ opening
def open_model(path: str | Path, *, family: str | None = None, prediction_type: str | None = None,
               dtype: torch.dtype | str | None = None, tokenizer: str | Path | None = None,
               config: str | Path | None = None) -> BaseModel:
    """Open a diffusers folder or a single original-layout ``.safetensors`` file, offline.

    ``family`` / ``prediction_type`` override detection; ``dtype`` casts the weights (default: as stored);
    ``tokenizer`` names a tokenizer folder or diffusers folder; ``config`` (single files) names a shipped
    config (sd15, sd21, sd2-base, sdxl) or a diffusers-layout config folder."""
    path = Path(path).expanduser()
    check_family(family)
    prediction_type = check_prediction(prediction_type)
    dtype = parse_dtype(dtype)
    if path.is_dir():
        return _open_folder(path, family, prediction_type, dtype, tokenizer)
    if not path.is_file():
        raise ModelError(f"{path}: no such file or folder; give a diffusers model folder or a .safetensors file")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(f"{path}: pickle checkpoints can run code when loaded and are not opened; convert it "
                         "to .safetensors first")
    return _open_single_file(path, family, prediction_type, dtype, tokenizer, config)


def _dtype_argument() -> str:
    """The name of from_pretrained's dtype argument in the installed diffusers: ``dtype`` where it replaced
    ``torch_dtype`` (which then warns that it is deprecated), ``torch_dtype`` in older releases."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _open_folder(path: Path, family: str | None, prediction_type: str | None, dtype: torch.dtype | None,
                 tokenizer: str | Path | None) -> BaseModel:
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json); give a folder saved "
                         "by diffusers or sdlora, or a single .safetensors checkpoint")
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    fam = family or ("sdxl" if "text_encoder_2" in index else None)
    kwargs: dict[str, Any] = dict(local_files_only=True)
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs[_dtype_argument()] = dtype
    has_tokenizer = (path / "tokenizer").is_dir()
    if tokenizer is not None or not has_tokenizer:
        if fam is None:
            unet_cfg = json.loads((path / "unet" / "config.json").read_text())
            fam = detect_family(unet_cfg)
        toks = tokenizers.find_tokenizers(fam, tokenizer, what=str(path))
        kwargs["tokenizer"] = toks[0]
        if "tokenizer_2" in index:
            kwargs["tokenizer_2"] = toks[-1]
    try:
        with _quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: the diffusers folder cannot be opened offline ({exc}); check that every "
                         "component folder holds its config and weights") from None
    return from_pipeline(pipe, family, prediction_type, source=str(path))


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No diffusers / transformers loading progress bars (sdlora shows its own progress)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()


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
        raise ModelError(f"{path}: unknown model family: the file has no model.diffusion_model.* keys, so it "
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
    toks = tokenizers.find_tokenizers(plan.family, tokenizer, what=f"{path.name} ({FAMILY_NAMES[plan.family]})",
                                      max_length=te_positions)
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


def make_scheduler(cfg: dict, prediction_type: str) -> Any:
    """The scheduler a config names (``_class_name``, default DDIM) with ``prediction_type``."""
    import diffusers

    cls = getattr(diffusers, str(cfg.get("_class_name", "DDIMScheduler")), diffusers.DDIMScheduler)
    return cls.from_config({k: v for k, v in cfg.items() if k != "_class_name"}, prediction_type=prediction_type)


def _assemble(family: str, models: dict[str, nn.Module], toks: list[Any], cfgs: dict[str, dict],
              prediction_type: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(cfgs.get("scheduler", {}), prediction_type)
    if family == "sdxl":
        force = cfgs.get("pipeline", {}).get("force_zeros_for_empty_prompt", True)
        return StableDiffusionXLPipeline(vae=models["vae"], text_encoder=models["text_encoder"],
                                         text_encoder_2=models["text_encoder_2"], tokenizer=toks[0],
                                         tokenizer_2=toks[-1], unet=models["unet"], scheduler=scheduler,
                                         force_zeros_for_empty_prompt=force)
    return StableDiffusionPipeline(vae=models["vae"], text_encoder=models["text_encoder"], tokenizer=toks[0],
                                   unet=models["unet"], scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def probe_v_prediction(unet: nn.Module) -> bool:
    """A1111's SD2 test: the UNet at t=999 on a constant 0.5 input and context; v-prediction models give a
    mean (output − input) below −1. Only meaningful for trained full-size SD2 UNets."""
    if unet.dtype != torch.float32:
        unet = copy.deepcopy(unet).float()
    width = int(unet.config.cross_attention_dim)
    x = torch.full((1, int(unet.config.in_channels), 8, 8), 0.5, device=unet.device)
    context = torch.full((1, 2, width), 0.5, device=unet.device)
    out = unet(x, torch.tensor([999], device=unet.device), encoder_hidden_states=context).sample
    return bool((out - x).mean().item() < -1)


# ------------------------------------------------------------------------------------------- saving
def single_file_metadata(family: str, prediction_type: str, cfgs: dict[str, dict], title: str = "") -> dict[str, str]:
    """sdlora's own keys (configs, family, prediction type) and modelspec keys other tools read."""
    arch = modelspec_architecture(family, prediction_type == "v_prediction")
    return {
        "sdlora.configs": json.dumps(cfgs, sort_keys=True),
        "sdlora.family": family,
        "sdlora.prediction_type": prediction_type,
        "sdlora_version": __version__,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if family == "sdxl"
        else "https://github.com/Stability-AI/stablediffusion",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.title": title or "sdlora checkpoint",
        "format": "pt",
    }


def _out_dtype(t_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and t_dtype.is_floating_point else t_dtype


def single_file_items(family: str, entries: list[checkpoint.Entry],
                      shapes: dict[str, dict[str, tuple[int, ...]]], dtypes: dict[str, dict[str, torch.dtype]],
                      get: Any, dtype: torch.dtype | None, v_prediction: bool,
                      text_positions: int) -> list[streaming.Item]:
    """Streamed items of a single file: ``get(component, key)`` gives a diffusers tensor on demand."""
    items = []
    for e in entries:
        shape = checkpoint.original_shape(e, [shapes[e.component][p] for p in e.parts])
        out = _out_dtype(dtypes[e.component][e.parts[0]], dtype)
        items.append(streaming.Item(e.key, out, shape, lambda e=e: checkpoint.to_original(
            e, [get(e.component, p) for p in e.parts])))
    for key, t in checkpoint.extra_tensors(family, text_positions, v_prediction).items():
        items.append(streaming.Item(key, t.dtype, tuple(t.shape), lambda t=t: t))
    return items


WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}


def te_file_key(key: str) -> str:
    """A text-encoder key as transformers 4 writes it (``text_model.`` level kept), which transformers 5
    also reads: the folder loads with either."""
    canonical = checkpoint.canonical_te_key(key)
    return canonical if canonical.startswith("text_projection") else f"text_model.{canonical}"


def component_items(name: str, keys: list[str], shapes: dict[str, tuple[int, ...]],
                    dtypes: dict[str, torch.dtype], get: Any, dtype: torch.dtype | None) -> list[streaming.Item]:
    """Streamed items of one diffusers component file; ``get(key)`` gives a tensor on demand."""
    rename = te_file_key if name.startswith("text_encoder") else (lambda k: k)
    return [streaming.Item(rename(k), _out_dtype(dtypes[k], dtype), shapes[k], lambda k=k: get(k)) for k in keys]


def write_folder_configs(folder: Path, family: str, cfgs: dict[str, dict], toks: list[Any],
                         prediction_type: str) -> None:
    """model_index.json, each component's config, the scheduler config and the tokenizers."""
    te2 = family == "sdxl"
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline" if te2 else "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "scheduler": ["diffusers", cfgs.get("scheduler", {}).get("_class_name", "DDIMScheduler")],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if te2:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"],
                     force_zeros_for_empty_prompt=cfgs.get("pipeline", {}).get("force_zeros_for_empty_prompt", True))
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    for name in ("unet", "vae"):
        (folder / name).mkdir()
        cfg = {"_class_name": "UNet2DConditionModel" if name == "unet" else "AutoencoderKL",
               "_diffusers_version": _diffusers_version(), **cfgs[name]}
        (folder / name / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for name in ("text_encoder", "text_encoder_2")[: 2 if te2 else 1]:
        (folder / name).mkdir()
        cfg = {"architectures": [_TE_CLASSES[name]], "model_type": "clip_text_model", **cfgs[name]}
        (folder / name / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (folder / "scheduler").mkdir()
    sched = dict(cfgs.get("scheduler", {}), prediction_type=prediction_type)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2, sort_keys=True))
    for i, tok in enumerate(toks[: 2 if te2 else 1]):
        tokenizers.save_tokenizer(tok, folder / ("tokenizer" if i == 0 else "tokenizer_2"))


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def resolve_format(path: str | Path, format: str | None) -> str:
    """"single-file" for a ``.safetensors`` path, "diffusers" otherwise, unless ``format`` says."""
    if format is None:
        return "single-file" if str(path).lower().endswith(".safetensors") else "diffusers"
    if format not in FORMATS:
        raise ModelError(f"unknown output format {format!r}; use single-file or diffusers")
    return format


def save_model(model: BaseModel, path: str | Path, *, format: str | None = None,
               dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model``'s current weights as one original-layout file (``format="single-file"``, the default
    for a ``.safetensors`` path) or a diffusers folder, cast to ``dtype`` (fp32/fp16/bf16; default as they
    are). Streams one tensor at a time; atomic. Adapters attached in bypass mode are not included (fuse them
    first, or use ``sdlora.bake``)."""
    path = Path(path).expanduser()
    fmt = resolve_format(path, format)
    dtype = parse_dtype(dtype)
    parts = model.pipeline_components()
    states = {n: m.state_dict() for n, m in parts.items()}
    shapes = {n: {k: tuple(v.shape) for k, v in s.items()} for n, s in states.items()}
    dtypes = {n: {k: v.dtype for k, v in s.items()} for n, s in states.items()}
    cfgs = model.configs()
    if fmt == "single-file":
        entries = layout_for(model.family, parts)
        items = single_file_items(model.family, entries, shapes, dtypes, lambda c, k: states[c][k], dtype,
                                  model.v_prediction, int(parts["text_encoder"].config.max_position_embeddings))
        streaming.write_streamed(path, items, single_file_metadata(model.family, model.prediction_type, cfgs,
                                                                   path.stem))
        return path
    with streaming.atomic_folder(path) as tmp:
        write_folder_configs(tmp, model.family, cfgs, model.tokenizers, model.prediction_type)
        for name in parts:
            items = component_items(name, list(states[name]), shapes[name], dtypes[name],
                                    lambda k, s=states[name]: s[k], dtype)
            streaming.write_streamed(tmp / name / WEIGHT_FILES[name], items, {"format": "pt"})
    return path
