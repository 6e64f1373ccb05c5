"""Generation as A1111 users run it: textual-inversion embeddings (formats, SDXL pairs, bad files), --vae,
batches that give the same images as one at a time, img2img / inpainting with adapters, A1111 parameters
read back, and --from-png re-rendering an sdlora image bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fake_adapters import make_adapter
from sdlora.errors import AdapterFileError, ConfigError, ModelError
from sdlora.files import tensors as files
from sdlora.inference import embeddings as emb
from sdlora.inference import pnginfo, prompts, render
from sdlora.inference.stack import AdapterStack
from sdlora.models import checkpoint
from sdlora.models import from_pipeline
from sdlora.models.vae_file import load_vae, replace_vae
from tiny import tiny_pipeline

torch.set_num_threads(1)


def _model(family: str = "sd1"):
    model = from_pipeline(tiny_pipeline(family))
    model.pipe.set_progress_bar_config(disable=True)
    return model


def _token_vectors(model, word: str) -> list[torch.Tensor]:
    """The token-embedding rows of ``word`` in each text encoder: an embedding that must encode as the word."""
    ids = model.tokenizers[0](word, add_special_tokens=False).input_ids
    return [e.get_input_embeddings().weight[ids].detach().clone() for e in model.text_encoders]


# ------------------------------------------------------------------------------------- embeddings
def test_embedding_formats_encode_as_their_vectors(tmp_path) -> None:
    model = _model()
    (vec,) = _token_vectors(model, "cat")
    save_file({"emb_params": vec}, str(tmp_path / "a1111.safetensors"))
    save_file({"<cat-toy>": vec}, str(tmp_path / "diffusers.safetensors"))
    torch.save({"string_to_param": {"*": vec}, "name": "old", "step": 3}, tmp_path / "old.pt")
    lib = emb.EmbeddingLibrary(emb.encoder_widths(model), [tmp_path / "a1111.safetensors"], folder=tmp_path,
                               allow_pickle=True)
    state = {k: v.clone() for k, v in model.text_encoders[0].state_dict().items()}
    reference, _ = prompts.encode(model, "a cat, blue")
    for text in ("a a1111, blue", "a embedding:diffusers, blue", "a OLD, blue", "a embedding:old.pt, blue"):
        pos, _ = prompts.encode(model, text, split=lib.split)
        assert torch.equal(pos.embeds, reference.embeds), text
    # weights apply to embeddings as to words; the model is untouched
    weighted, _ = prompts.encode(model, "a (a1111:1.4), blue", split=lib.split)
    assert torch.equal(weighted.embeds, prompts.encode(model, "a (cat:1.4), blue")[0].embeds)
    assert all(torch.equal(v, model.text_encoders[0].state_dict()[k]) for k, v in state.items())
    assert len(model.tokenizers[0]) == 514
    assert [e.name for e in lib.used("x a1111", "embedding:old")] == ["a1111", "old"]


def test_sdxl_embedding_pair(tmp_path) -> None:
    model = _model("sdxl")
    l_vec, g_vec = _token_vectors(model, "dog")
    save_file({"clip_l": l_vec, "clip_g": g_vec}, str(tmp_path / "pair.safetensors"))
    lib = emb.EmbeddingLibrary(emb.encoder_widths(model), folder=tmp_path)
    pos, _ = prompts.encode(model, "a pair", split=lib.split)
    ref, _ = prompts.encode(model, "a dog")
    assert torch.equal(pos.embeds, ref.embeds) and torch.equal(pos.pooled, ref.pooled)
    save_file({"emb_params": l_vec}, str(tmp_path / "single.safetensors"))
    with pytest.raises(ConfigError, match=r"single.safetensors: this model expects clip_l \(32 wide\) and clip_g"):
        emb.EmbeddingLibrary(emb.encoder_widths(model), [tmp_path / "single.safetensors"])


def test_bad_embeddings_are_sentences(tmp_path) -> None:
    model = _model()
    widths = emb.encoder_widths(model)
    save_file({"emb_params": torch.zeros(2, 768)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ConfigError, match=r"wide.safetensors: this model expects vectors 32 wide, but it holds "
                                          r"\(2, 768\)"):
        emb.load_embedding(tmp_path / "wide.safetensors", widths)
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}}, tmp_path / "p.pt")
    with pytest.raises(ConfigError, match="--allow-pickle"):
        emb.load_embedding(tmp_path / "p.pt", widths)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(ConfigError, match="junk.safetensors"):
        emb.load_embedding(tmp_path / "junk.safetensors", widths)
    lib = emb.EmbeddingLibrary(widths, folder=tmp_path)
    with pytest.raises(ConfigError, match="embedding:nothere: no such embedding in"):
        prompts.encode(model, "embedding:nothere", split=lib.split)
    # a bare word that is no embedding is text
    assert torch.equal(prompts.encode(model, "nothere", split=lib.split)[0].embeds,
                       prompts.encode(model, "nothere")[0].embeds)


# -------------------------------------------------------------------------------------------- vae
def test_vae_from_file_folder_and_original_layout(tmp_path) -> None:
    model = _model()
    other = tiny_pipeline("sd1").vae
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    other.save_pretrained(str(tmp_path / "vae_dir"))
    state = other.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "diffusers.safetensors"))
    n_up = len(other.config.up_block_types)
    original = {}
    for k, v in state.items():
        key, kind = checkpoint.vae_original_key(k, n_up)
        original["first_stage_model." + key] = checkpoint.to_original(checkpoint.Entry(key, "vae", (k,), kind), [v])
    save_file(original, str(tmp_path / "orig.safetensors"))
    for source in ("vae_dir", "diffusers.safetensors", "orig.safetensors"):
        vae = load_vae(tmp_path / source, model.vae)
        assert all(torch.equal(vae.state_dict()[k], state[k]) for k in state), source
    before = model.vae
    save_file({"encoder.nothing": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelError, match="bad.safetensors: .* VAE tensors are missing"):
        replace_vae(model, tmp_path / "bad.safetensors")
    assert model.vae is before
    replace_vae(model, tmp_path / "orig.safetensors")
    assert model.vae is not before and torch.equal(model.pipe.vae.state_dict()["decoder.conv_out.weight"],
                                                   state["decoder.conv_out.weight"])


# ----------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_batch_gives_the_images_of_one_at_a_time(family) -> None:
    """Image i of a batch equals image i rendered alone to fp32 tolerance (the batched UNet's sums differ in
    the last bits on CPU: about 1e-6), with ancestral sampling (per-image noise every step)."""
    model = _model(family)
    from sdlora.inference import samplers

    model.pipe.scheduler = samplers.make_scheduler("euler a", model.base_scheduler, model.prediction_type)
    pos, neg = prompts.encode(model, "a cat", "blurry")
    cond = prompts.pipeline_kwargs(pos, neg, torch.float32)
    job = render.Job(steps=3, cfg=7.0, width=32, height=32)
    batch = render.render(model, cond, [11, 12, 13], job)
    alone = [render.render(model, cond, [s], job)[0] for s in (11, 12, 13)]
    for a, b in zip(batch, alone):
        assert np.abs(a - b).max() < 1e-4
    assert np.abs(batch[0] - batch[1]).max() > 1e-2  # different seeds, different images


# ------------------------------------------------------------------------------- img2img / inpaint
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_img2img_and_inpaint_with_adapters(family, tmp_path) -> None:
    model = _model(family)
    init = Image.fromarray((np.indices((40, 40)).sum(0) * 3 % 255).astype(np.uint8)).convert("RGB")
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (0, 0, 20, 40))
    cond = {"prompt": "a cat", "negative_prompt": None}
    job = render.load_inputs(render.Job(steps=4, cfg=7.0, width=32, height=32), init, None, 0.5)
    assert job.mode == "img2img" and job.init_image.size == (32, 32) and "resized to 32x32" in job.notes[0]
    base = render.render(model, cond, [3], job)[0]
    inpaint = render.load_inputs(render.Job(steps=4, cfg=7.0, width=32, height=32), init, mask, 0.9)
    base_inpaint = render.render(model, cond, [3], inpaint)[0]
    assert base.shape == base_inpaint.shape == (32, 32, 3)
    stack = AdapterStack(model)
    make_adapter(model, tmp_path / "a.safetensors", preset="full", seed=4)
    stack.add(tmp_path / "a.safetensors")
    with_lora = render.render(model, cond, [3], job)[0]
    assert np.abs(with_lora - base).max() > 1e-3  # the stack applies to the img2img pipeline
    inpainted = render.render(model, cond, [3], inpaint)[0]
    assert np.abs(inpainted - base_inpaint).max() > 1e-3
    stack.remove("a")
    assert np.array_equal(render.render(model, cond, [3], job)[0], base)


def test_init_and_mask_errors(tmp_path) -> None:
    init = Image.new("RGB", (32, 32))
    with pytest.raises(ConfigError, match="--mask is 16x16 but the init image is 32x32"):
        render.load_inputs(render.Job(1, 1.0, 32, 32), init, Image.new("L", (16, 16)), None)
    with pytest.raises(ConfigError, match="--mask needs --init-image"):
        render.load_inputs(render.Job(1, 1.0, 32, 32), None, Image.new("L", (32, 32)), None)
    with pytest.raises(ConfigError, match="--denoise 1.5"):
        render.load_inputs(render.Job(1, 1.0, 32, 32), init, None, 1.5)
    (tmp_path / "x.png").write_bytes(b"no image")
    with pytest.raises(ConfigError, match="--init-image .*x.png"):
        render.load_inputs(render.Job(1, 1.0, 32, 32), tmp_path / "x.png", None, None)


# ------------------------------------------------------------------------------------- parameters
A1111_TEXT = """masterpiece, (best quality:1.2), a castle
on a hill <lora:ink:0.6>
Negative prompt: EasyNegative, blurry
lowres
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, \
Model hash: 6ce0161689, Model: anything, Clip skip: 2, Lora hashes: "ink: 1a2b3c4d5e6f, style: 0f9e8d7c6b5a", \
TI hashes: "EasyNegative: c74b4e810b03", Hires upscale: 2, ADetailer model: face_yolov8n.pt, Version: v1.10.1"""


def test_parameters_are_read_as_a1111_writes_them() -> None:
    s = pnginfo.settings_from_text(A1111_TEXT)
    assert s.prompt == "masterpiece, (best quality:1.2), a castle\non a hill <lora:ink:0.6>"
    assert s.negative_prompt == "EasyNegative, blurry\nlowres"
    assert s.values == dict(steps=28, cfg=6.5, seed=1234, clip_skip=2, width=512, height=768,
                            sampler="dpm++ 2m karras")
    assert s.lora_hashes == {"ink": "1a2b3c4d5e6f", "style": "0f9e8d7c6b5a"}
    assert s.embedding_hashes == {"EasyNegative": "c74b4e810b03"}
    assert s.unknown == ["Hires upscale: 2", "ADetailer model: face_yolov8n.pt"]
    with pytest.raises(ConfigError, match="Seed: 'abc'"):
        pnginfo.settings_from_text("x\nSteps: 2, Sampler: Euler, Seed: abc")


def test_adapters_found_by_hash_or_name(tmp_path) -> None:
    model = _model()
    make_adapter(model, tmp_path / "renamed.safetensors", seed=1)
    make_adapter(model, tmp_path / "style.safetensors", seed=2)
    h = files.short_hash(tmp_path / "renamed.safetensors")
    found, notes = pnginfo.locate_adapters(["ink", "style"], {"ink": h}, tmp_path)
    assert found == {"ink": tmp_path / "renamed.safetensors", "style": tmp_path / "style.safetensors"}
    assert "found by its hash" in notes[0]
    with pytest.raises(AdapterFileError, match=r"not in .*: gone \(hash 000000000000\)"):
        pnginfo.locate_adapters(["gone"], {"gone": "000000000000"}, tmp_path)


# ------------------------------------------------------------------------------------ the command line
@pytest.fixture
def sd1_setup(tmp_path):
    from fake_adapters import tokenizer_dir
    from sdlora.models import save_model

    model = _model()
    path = save_model(model, tmp_path / "base.safetensors")
    loras = tmp_path / "loras"
    loras.mkdir()
    make_adapter(model, loras / "ink.safetensors", algo="loha", seed=7)
    make_adapter(model, tmp_path / "style.safetensors", preset="full", seed=8)
    (tmp_path / "emb").mkdir()
    save_file({"emb_params": _token_vectors(model, "blur")[0]}, str(tmp_path / "emb" / "BadPic.safetensors"))
    base = ["generate", "--model", str(path), "--tokenizer", str(tokenizer_dir(tmp_path)), "--quiet",
            "--steps", "3"]
    return dict(base=base, loras=loras, style=tmp_path / "style.safetensors", tmp=tmp_path, emb=tmp_path / "emb")


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_from_png_rerenders_bit_for_bit(sd1_setup, capsys) -> None:
    from sdlora.cli import main

    f = sd1_setup
    out1, out2 = f["tmp"] / "out1", f["tmp"] / "out2"
    assert main(f["base"] + ["--prompt", "a (red:1.3) cat, [dog] <lora:ink:0.5>", "--negative-prompt",
                             "BadPic, lowres", "--lora", f"{f['style']}:0.8", "--lora-dir", str(f["loras"]),
                             "--embeddings-dir", str(f["emb"]), "--clip-skip", "2", "--seed", "42",
                             "--sampler", "dpm++ 2m karras", "--cfg", "5.5", "--out", str(out1)]) == 0
    first = out1 / "00000-42.png"
    text = pnginfo.read_settings(first)
    assert text.values["clip_skip"] == 2 and text.fields["TI hashes"].startswith("BadPic: ")
    # the style adapter is found by hash under another name in the LoRA folder
    (f["loras"] / "renamed.safetensors").write_bytes(f["style"].read_bytes())
    capsys.readouterr()
    assert main(f["base"][:6] + ["--from-png", str(first), "--lora-dir", str(f["loras"]), "--embeddings-dir",
                                 str(f["emb"]), "--out", str(out2)]) == 0
    err = capsys.readouterr().err
    assert "style: found by its hash" in err and "Traceback" not in err
    again = out2 / "00000-42.png"
    assert np.array_equal(_png(first), _png(again))
    a, b = pnginfo.read_settings(first), pnginfo.read_settings(again)
    assert a.values == b.values and a.lora_hashes == b.lora_hashes and a.prompt == b.prompt


def test_cli_batch_clip_skip_default_and_notes(sd1_setup, capsys) -> None:
    from sdlora.cli import main

    f = sd1_setup
    tensors, meta = files.read_tensors(f["style"])
    files.write_tensors(f["loras"] / "skip2.safetensors", tensors, {**meta, "ss_clip_skip": "2"})
    common = f["base"] + ["--prompt", "(unbalanced cat", "--lora", str(f["loras"] / "skip2.safetensors"),
                          "--seed", "5", "--count", "3"]
    assert main(common + ["--out", str(f["tmp"] / "one")]) == 0
    err = capsys.readouterr().err
    assert "clip skip 2, as the adapters were trained" in err and "never closed" in err
    assert main(common + ["--batch-size", "2", "--out", str(f["tmp"] / "two")]) == 0
    for i, seed in enumerate((5, 6, 7)):
        one = _png(f["tmp"] / "one" / f"{i:05d}-{seed}.png").astype(int)
        two = _png(f["tmp"] / "two" / f"{i:05d}-{seed}.png").astype(int)
        assert np.abs(one - two).max() <= 1  # batched: fp32 tolerance, at most one 8-bit level
        assert pnginfo.read_settings(f["tmp"] / "one" / f"{i:05d}-{seed}.png").values["clip_skip"] == 2
    assert main(common[:-2] + ["--count", "1", "--clip-skip", "1", "--out", str(f["tmp"] / "three")]) == 0
    assert "Clip skip" not in pnginfo.read_settings(f["tmp"] / "three" / "00000-5.png").fields


def test_cli_img2img_inpaint_and_errors(sd1_setup, capsys) -> None:
    from sdlora.cli import main

    f = sd1_setup
    Image.new("RGB", (48, 40), (180, 40, 40)).save(f["tmp"] / "init.png")
    Image.new("L", (48, 40), 255).save(f["tmp"] / "mask.png")
    Image.new("L", (10, 10), 255).save(f["tmp"] / "small.png")
    common = f["base"] + ["--prompt", "a cat", "--seed", "1", "--init-image", str(f["tmp"] / "init.png")]
    assert main(common + ["--denoise", "0.6", "--out", str(f["tmp"] / "i2i")]) == 0
    err = capsys.readouterr().err
    assert "resized to 32x32" in err
    assert pnginfo.read_settings(f["tmp"] / "i2i" / "00000-1.png").fields["Denoising strength"] == "0.6"
    assert main(common + ["--mask", str(f["tmp"] / "mask.png"), "--out", str(f["tmp"] / "inp")]) == 0
    assert (f["tmp"] / "inp" / "00000-1.png").is_file()
    rc = main(common + ["--mask", str(f["tmp"] / "small.png"), "--out", str(f["tmp"] / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "--mask is 10x10 but the init image is 48x40" in err and "Traceback" not in err
    rc = main(f["base"] + ["--prompt", "x", "--embedding", str(f["tmp"] / "nope.safetensors"), "--out",
                           str(f["tmp"] / "bad")])
    assert rc == 2 and "nope.safetensors: no such embedding file" in capsys.readouterr().err
    rc = main(f["base"][:5] + ["--out", str(f["tmp"] / "bad")])
    assert rc == 2 and "--prompt" in capsys.readouterr().err
    assert not (f["tmp"] / "bad").exists() or not any((f["tmp"] / "bad").iterdir())


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_long_weighted_prompts_generate_in_batches(family) -> None:
    from sdlora.inference.generate import generate

    model = _model(family)
    prompt = "(a red cat:1.3), " + "on a mat, " * 10 + "BREAK [night]"
    images = generate(model, prompt, "blurry", seed=3, steps=2, count=2, batch_size=2, progress=False)
    alone = generate(model, prompt, "blurry", seed=4, steps=2, progress=False)[0]
    assert len(images) == 2 and images[1].seed == 4
    assert np.abs(images[1].array - alone.array).max() < 1e-4
    assert any("chunks of 75" in n for n in images[0].notes)


def test_cli_vae_is_used_and_written(sd1_setup) -> None:
    from sdlora.cli import main

    f = sd1_setup
    other = tiny_pipeline("sd1").vae
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(f["tmp"] / "bright.safetensors"))
    common = f["base"] + ["--prompt", "a cat", "--seed", "2"]
    assert main(common + ["--out", str(f["tmp"] / "plain")]) == 0
    assert main(common + ["--vae", str(f["tmp"] / "bright.safetensors"), "--out", str(f["tmp"] / "vae")]) == 0
    plain, bright = _png(f["tmp"] / "plain" / "00000-2.png"), _png(f["tmp"] / "vae" / "00000-2.png")
    assert bright.astype(int).mean() > plain.astype(int).mean() + 5
    assert pnginfo.read_settings(f["tmp"] / "vae" / "00000-2.png").fields["VAE"] == "bright"
