"""``save_model``: write a model as one original-layout file or a diffusers folder (fp32/fp16/bf16),
streaming one tensor at a time, atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdlora import __version__
from sdlora.errors import ModelError
from sdlora.files import streaming
from sdlora.files.tensors import parse_dtype
from sdlora.models import checkpoint, tokenizers
from sdlora.models.families import modelspec_architecture
from sdlora.models.base import BaseModel, FORMATS, _TE_CLASSES
from sdlora.models.single_file import layout_for


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
