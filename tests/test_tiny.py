"""The offline tiny models and the shipped full-size configs."""
from __future__ import annotations

import pytest
import torch
from diffusers import Transformer2DModel

from sdlora.models.configs import config_dir, config_names
from sdlora.errors import ModelError
from tiny import (
    FAMILIES, IMAGE_PX, LATENT_PX, TE2_PROJ, TEXT_DIM, full_size_text_encoders, full_size_unet,
    tiny_components, tiny_pipeline, tiny_tokenizer,
)


def _count(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_tokenizer_round_trips_ascii(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    assert len(tok) == 514 and tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (512, 513, 513)
    text = "a photo of sks dog, 2 cats!"
    ids = tok(text).input_ids
    assert ids[0] == 512 and ids[-1] == 513
    assert tok.decode(ids, skip_special_tokens=True).split() == ["a", "photo", "of", "sks", "dog", ",", "2", "cats", "!"]
    assert tok.decode(tok("hello world").input_ids, skip_special_tokens=True) == "hello world"
    padded = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == 513


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_components_are_small_and_deterministic(family):
    a, b = tiny_components(family), tiny_components(family)
    assert sum(p.numel() for p in a["unet"].parameters()) < 3_000_000
    for name in ("unet", "vae", "text_encoder"):
        for (ka, va), (kb, vb) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert ka == kb and torch.equal(va, vb), f"{name}.{ka} differs between two builds"


def test_sd1_shape(sd1):
    unet = sd1["unet"]
    assert unet.config.use_linear_projection is False
    assert isinstance(unet.down_blocks[0].attentions[0].proj_in, torch.nn.Conv2d)
    assert unet.down_blocks[0].downsamplers is not None and unet.up_blocks[0].upsamplers is not None
    assert any(r.conv_shortcut is not None for b in unet.up_blocks for r in b.resnets)
    assert sd1["scheduler"].config.prediction_type == "epsilon"


def test_sd2_shape(sd2):
    unet = sd2["unet"]
    assert unet.config.use_linear_projection is True
    assert isinstance(unet.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    assert sd2["scheduler"].config.prediction_type == "v_prediction"
    assert tiny_components("sd2", prediction_type="epsilon")["scheduler"].config.prediction_type == "epsilon"


def test_sdxl_shape(sdxl):
    unet = sdxl["unet"]
    assert unet.config.down_block_types[0] == "DownBlock2D"
    assert len(unet.down_blocks[1].attentions[0].transformer_blocks) == 2
    assert unet.config.addition_embed_type == "text_time"
    assert sdxl["text_encoder_2"].config.projection_dim == TE2_PROJ
    assert hasattr(sdxl["text_encoder_2"], "text_model") and not hasattr(sdxl["text_encoder"], "text_model")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_unet_forward_with_text_encoder(family):
    parts = tiny_components(family)
    ids = parts["tokenizer"](["a dog", "a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = parts["text_encoder"](ids).last_hidden_state
        assert context.shape == (2, 77, TEXT_DIM)
        out = parts["unet"](torch.randn(2, 4, LATENT_PX, LATENT_PX), 10, encoder_hidden_states=context).sample
    assert out.shape == (2, 4, LATENT_PX, LATENT_PX) and torch.isfinite(out).all()


def test_sdxl_unet_forward_with_added_cond(sdxl):
    ids = sdxl["tokenizer"](["a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h1 = sdxl["text_encoder"](ids, output_hidden_states=True).hidden_states[-2]
        out2 = sdxl["text_encoder_2"](ids, output_hidden_states=True)
        context = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
        cond = {"text_embeds": out2.text_embeds, "time_ids": torch.tensor([[IMAGE_PX, IMAGE_PX, 0, 0, IMAGE_PX, IMAGE_PX]])}
        out = sdxl["unet"](torch.randn(1, 4, LATENT_PX, LATENT_PX), 10, encoder_hidden_states=context,
                           added_cond_kwargs=cond).sample
    assert out.shape == (1, 4, LATENT_PX, LATENT_PX) and torch.isfinite(out).all()


def test_vae_round_trip_shapes(sd1):
    with torch.no_grad():
        latents = sd1["vae"].encode(torch.randn(1, 3, IMAGE_PX, IMAGE_PX)).latent_dist.mean
        assert latents.shape == (1, 4, LATENT_PX, LATENT_PX)
        assert sd1["vae"].decode(latents).sample.shape == (1, 3, IMAGE_PX, IMAGE_PX)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pipeline_generates(family):
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a photo of a dog", num_inference_steps=2, height=IMAGE_PX, width=IMAGE_PX, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, IMAGE_PX, IMAGE_PX, 3)


# Full-size models from the shipped configs, on the meta device. Parameter counts are the published
# ones (SD 1.5 UNet 859.5M, SD 2.x 865.9M, SDXL 2.567B; CLIP-L 123M, OpenCLIP-H 340M, bigG 694.7M).
@pytest.mark.parametrize(
    "family, params, linear, conv, te_params",
    [
        ("sd1", 859_520_964, 184, 98, [123_060_480]),
        ("sd2", 865_910_724, 216, 66, [340_387_840]),
        ("sdxl", 2_567_463_684, 743, 51, [123_060_480, 694_659_840]),
    ],
)
def test_full_size_models(family, params, linear, conv, te_params):
    unet = full_size_unet(family)
    assert next(unet.parameters()).device.type == "meta"
    assert sum(p.numel() for p in unet.parameters()) == params
    assert (_count(unet, torch.nn.Linear), _count(unet, torch.nn.Conv2d)) == (linear, conv)
    encoders = full_size_text_encoders(family)
    assert [sum(p.numel() for p in te.parameters()) for te in encoders] == te_params


def test_full_size_transformer_module_counts():
    # kohya's LoRA coverage of Transformer2DModel blocks: SD 1.5 192, SDXL 722.
    for family, expected in (("sd1", 192), ("sdxl", 722)):
        unet = full_size_unet(family)
        found = sum(
            isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            for block in unet.modules() if isinstance(block, Transformer2DModel) for m in block.modules()
        )
        assert found == expected, family


def test_config_dir():
    assert config_names() == ["sd15", "sd21", "sd2-base", "sdxl"]
    for name in config_names():
        folder = config_dir(name)
        for part in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                     "scheduler/scheduler_config.json"):
            assert (folder / part).is_file(), f"{name}/{part}"
    assert (config_dir("sdxl") / "text_encoder_2" / "config.json").is_file()
    with pytest.raises(ModelError, match="sd15.*sdxl"):
        config_dir("sd3")
