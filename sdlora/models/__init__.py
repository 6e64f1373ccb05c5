"""Base models: open SD 1.x / SD 2.x / SDXL offline, say what they are, save them.

``open_model(path)`` returns a ``BaseModel``: the diffusers pipeline plus its family ("sd1", "sd2",
"sdxl") and prediction type, and the adaptable components by the names the rest of sdlora uses
("unet", "te1", "te2"). ``path`` is a diffusers folder or a single original-layout ``.safetensors`` file.

Opening a single file, fully offline (``sdlora.models.single_file``):
- family from the keys (``checkpoint.detect_family``), or the caller's ``family``;
- configs: the caller's ``config`` (a shipped name or a diffusers-layout folder), else the configs sdlora
  embeds in files it writes (``sdlora.configs`` metadata), else the shipped ones (sd15, sd2-base / sd21,
  sdxl — see ``sdlora.models.configs``);
- prediction type: the caller's ``prediction_type``; else the file's own signal (a ``v_pred`` key as
  ComfyUI writes, or modelspec / sdlora metadata); else, for SD2 only, A1111's probe (the UNet at t=999 on a
  constant input: a mean output below -1 means v-prediction) — a heuristic, which is why the override
  exists; else "epsilon";
- tokenizer: ``sdlora.models.tokenizers.find_tokenizers`` (the caller's folder, else the CLIP vocabulary
  shipped in the package for text encoders with CLIP's 49,408 tokens, else the local HF cache).
Weights are read tensor by tensor into models built on the meta device, so opening holds one copy.

``save_model`` (``sdlora.models.saving``) writes a model as a diffusers folder or as one original-layout
file (fp32/fp16/bf16), streaming one tensor at a time, atomically.

Modules: ``base`` (BaseModel, family and prediction checks), ``opening`` (open_model), ``single_file``
(the single-file plan and its lazy tensor reads), ``assemble`` (pipeline and scheduler from components),
``saving`` (save_model), ``checkpoint`` (the original key layout), ``families`` (family facts).
"""
from sdlora.models.assemble import make_scheduler, probe_v_prediction
from sdlora.models.base import (FORMATS, PREDICTIONS, SHIPPED, BaseModel, check_family, check_prediction,
                                detect_family, from_pipeline)
from sdlora.models.opening import open_model
from sdlora.models.saving import (WEIGHT_FILES, component_items, resolve_format, save_model,
                                  single_file_items, single_file_metadata, te_file_key, write_folder_configs)
from sdlora.models.single_file import (SingleFilePlan, build_skeletons, layout_for, load_state_dicts,
                                       plan_single_file, raise_missing, read_config_folder, read_entry)

__all__ = ["FORMATS", "PREDICTIONS", "SHIPPED", "WEIGHT_FILES", "BaseModel", "SingleFilePlan", "build_skeletons",
           "check_family", "check_prediction", "component_items", "detect_family", "from_pipeline", "layout_for",
           "load_state_dicts", "make_scheduler", "open_model", "plan_single_file", "probe_v_prediction",
           "raise_missing", "read_config_folder", "read_entry", "resolve_format", "save_model",
           "single_file_items", "single_file_metadata", "te_file_key", "write_folder_configs"]
