"""Offline tiny test models, built from configs (never from a hub), deterministic, each in well under a
second on CPU.

- `tiny_tokenizer()`: a byte-level CLIPTokenizer (vocab 514, no merges).
- `tiny_components(family)`: the parts of an SD1-, SD2- or SDXL-shaped pipeline with the real block
  layout (attention types, projections, conditioning) at toy widths. Images are IMAGE_PX (32) px; the
  2-level VAE halves them to LATENT_PX (16) px latents.
- `tiny_pipeline(family)`: the diffusers pipeline built from those parts.
- `full_size_unet(family)`, `full_size_text_encoders(family)`: the real-size models on the meta device
  (no memory, no weights) from the configs shipped in sdlora/assets, for counting modules.
"""
from __future__ import annotations

import json
import pathlib
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdlora.models.configs import config_dir

FAMILIES = ("sd1", "sd2", "sdxl")
IMAGE_PX = 32  # tiny images are 32x32 RGB
LATENT_PX = 16  # the tiny VAE (2 levels) halves once: latents are (B, 4, 16, 16)
TEXT_DIM = 32  # hidden size of every tiny text encoder
TE2_PROJ = 32  # projection dim of the tiny SDXL second encoder (the pooled embedding)
TIME_DIM = 8  # addition_time_embed_dim of the tiny SDXL UNet
VOCAB = 514  # 256 bytes + 256 "</w>" forms + <|startoftext|> + <|endoftext|>
BOS_ID, EOS_ID = 512, 513


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (256 entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_tokenizer(path: str | pathlib.Path | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes: vocab.json (514 entries) and an empty merges.txt are written to
    `path` (a new temporary folder when None) and loaded. Each character of a word is one token, the last
    one in its `</w>` form; pad = eos = `<|endoftext|>` (id 513), bos = `<|startoftext|>` (id 512)."""
    if path is None:  # written to a temporary folder that is removed once loaded (the tokenizer keeps its vocab)
        with tempfile.TemporaryDirectory(prefix="tiny_tok_") as tmp:
            return tiny_tokenizer(tmp)
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token="<|endoftext|>")


def _text_config(act: str, projection_dim: int = TEXT_DIM) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=act, projection_dim=projection_dim,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )


def _tiny_vae() -> AutoencoderKL:
    """2-level VAE: (B, 3, 32, 32) images <-> (B, 4, 16, 16) latents."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_PX,
    )


def _tiny_unet(family: str) -> UNet2DConditionModel:
    common = dict(
        sample_size=LATENT_PX, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2, norm_num_groups=8, cross_attention_dim=TEXT_DIM,
    )
    if family == "sd1":
        return UNet2DConditionModel(
            **common, attention_head_dim=8, use_linear_projection=False,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    if family == "sd2":
        return UNet2DConditionModel(
            **common, attention_head_dim=(4, 8), use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    # SDXL: first level without attention like the real model, deeper transformers below, the two
    # encoders' hidden states concatenated as cross-attention context, text_time added conditioning.
    common["cross_attention_dim"] = 2 * TEXT_DIM
    return UNet2DConditionModel(
        **common, attention_head_dim=(4, 8), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + TE2_PROJ,
    )


def _scheduler(family: str, prediction_type: str) -> DDIMScheduler | EulerDiscreteScheduler:
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              steps_offset=1, prediction_type=prediction_type)
    if family == "sdxl":
        return EulerDiscreteScheduler(**kw, timestep_spacing="leading")
    return DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=False)


def tiny_components(family: str, prediction_type: str | None = None) -> dict:
    """Parts of a tiny pipeline for `family` in FAMILIES, in eval mode, seeded (same weights every call).

    Keys: unet, vae, text_encoder, tokenizer, scheduler; for sdxl also text_encoder_2, tokenizer_2.
    `prediction_type` defaults to "v_prediction" for sd2 and "epsilon" otherwise.
    UNet input (B, 4, 16, 16); encoder_hidden_states (B, 77, 32) for sd1/sd2, (B, 77, 64) for sdxl
    (te1 and te2 penultimate states concatenated) with added_cond_kwargs text_embeds (B, 32) and
    time_ids (B, 6)."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown tiny family {family!r}; pick one of {', '.join(FAMILIES)}.")
    torch.manual_seed(0)
    parts: dict = {
        "unet": _tiny_unet(family),
        "vae": _tiny_vae(),
        "text_encoder": CLIPTextModel(_text_config("quick_gelu" if family == "sd1" else "gelu")),
        "tokenizer": tiny_tokenizer(),
    }
    if family == "sdxl":
        parts["text_encoder"] = CLIPTextModel(_text_config("quick_gelu"))
        parts["text_encoder_2"] = CLIPTextModelWithProjection(_text_config("gelu", TE2_PROJ))
        parts["tokenizer_2"] = parts["tokenizer"]
    default = "v_prediction" if family == "sd2" else "epsilon"
    parts["scheduler"] = _scheduler(family, prediction_type or default)
    for value in parts.values():
        if isinstance(value, torch.nn.Module):
            value.eval()
    return parts


def tiny_pipeline(family: str, prediction_type: str | None = None):
    """The diffusers StableDiffusionPipeline (sd1, sd2) or StableDiffusionXLPipeline (sdxl) over
    `tiny_components(family)`; no safety checker. Generate at height=width=IMAGE_PX."""
    parts = tiny_components(family, prediction_type)
    if family == "sdxl":
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


_FULL = {"sd1": "sd15", "sd15": "sd15", "sd2": "sd21", "sd21": "sd21", "sd2-base": "sd2-base", "sdxl": "sdxl"}


def full_size_unet(family: str) -> UNet2DConditionModel:
    """The real-size UNet of `family` (sd1/sd15, sd2/sd21, sd2-base, sdxl) on the meta device."""
    from accelerate import init_empty_weights

    folder = config_dir(_FULL[family]) / "unet"
    with init_empty_weights():
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))


def full_size_text_encoders(family: str) -> list[torch.nn.Module]:
    """The real-size text encoders of `family` on the meta device: [CLIPTextModel] or, for sdxl,
    [CLIPTextModel, CLIPTextModelWithProjection]."""
    from accelerate import init_empty_weights

    folder = config_dir(_FULL[family])
    models = []
    with init_empty_weights():
        models.append(CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")))
        if (folder / "text_encoder_2").is_dir():
            models.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    return models
