"""A pipeline from its components: the scheduler a config names, the SD/SDXL pipeline, and A1111's
v-prediction probe for SD2 UNets."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn



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
