"""Base models: single-file and diffusers-folder round trips, layout checked against diffusers' converters,
detection and overrides, tokenizers from the offline cache, and the errors of bad input."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fake_adapters import tokenizer_dir
from sdlora.models import checkpoint
from sdlora.models import configs
from sdlora import models
from sdlora.errors import ModelError
from tiny import tiny_pipeline

torch.set_num_threads(1)


def _states(model: models.BaseModel) -> dict[str, dict[str, torch.Tensor]]:
    return {n: m.state_dict() for n, m in model.pipeline_components().items()}


def _assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert a[name][k].dtype == b[name][k].dtype, (name, k)
            assert torch.equal(a[name][k], b[name][k]), (name, k)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trip_is_bit_exact(family, tmp_path):
    tok = tokenizer_dir(tmp_path)
    model = models.from_pipeline(tiny_pipeline(family))
    path = models.save_model(model, tmp_path / "base.safetensors")
    again = models.open_model(path, tokenizer=tok)
    assert again.family == family
    assert again.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    _assert_equal_states(_states(model), _states(again))
    assert again.ignored_keys == []
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        if family == "sd2":
            assert tuple(f.get_slice("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")
                         .get_shape()) == (96, 32)
    expected = {
        "sd1": ["cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                "model.diffusion_model.input_blocks.1.1.proj_in.weight", "first_stage_model.decoder.up.1.block.0.conv1.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight"],
        "sd2": ["cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight", "cond_stage_model.model.ln_final.bias",
                "cond_stage_model.model.positional_embedding", "v_pred"],
        "sdxl": ["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                 "conditioner.embedders.1.model.text_projection", "model.diffusion_model.label_emb.0.0.weight",
                 "model.diffusion_model.output_blocks.2.2.conv.weight"],
    }[family]
    assert set(expected) <= keys


def test_layout_matches_diffusers_converters_at_full_size():
    """Our diffusers->original names, read back by diffusers' own single-file converters, give every key of
    the real-size SD1.5 / SD2.1 / SDXL models with the right shapes (meta tensors: no memory)."""
    from diffusers.loaders import single_file_utils as ref

    for family, name, kind in [("sd1", "sd15", "v1"), ("sd2", "sd21", "v2"), ("sdxl", "sdxl", "xl_base")]:
        cfgs = models.read_config_folder(configs.config_dir(name))
        sk = models.build_skeletons(family, cfgs)
        st = {c: m.state_dict() for c, m in sk.items()}
        orig = {e.key: checkpoint.to_original(e, [st[e.component][p] for p in e.parts])
                for e in models.layout_for(family, sk)}
        assert ref.infer_diffusers_model_type(orig) == kind
        unet = ref.convert_ldm_unet_checkpoint(orig, dict(sk["unet"].config))
        vae = ref.convert_ldm_vae_checkpoint(orig, dict(sk["vae"].config))
        for mine, theirs in (("unet", unet), ("vae", vae)):
            assert set(theirs) == set(st[mine])
            assert all(theirs[k].shape == st[mine][k].shape for k in theirs)


@pytest.mark.parametrize("family,component,prefix", [
    ("sd1", "text_encoder", None), ("sd2", "text_encoder", "cond_stage_model.model."),
    ("sdxl", "text_encoder", None), ("sdxl", "text_encoder_2", "conditioner.embedders.1.model.")])
def test_text_encoder_layout_matches_diffusers_converters(family, component, prefix, tmp_path):
    """Values too: OpenCLIP fused q/k/v and the transposed text_projection come back as diffusers reads them."""
    from diffusers.loaders import single_file_utils as ref

    pipe = tiny_pipeline(family)
    path = models.save_model(models.from_pipeline(pipe), tmp_path / "m.safetensors")
    orig = load_file(str(path))
    te = getattr(pipe, component)
    if prefix:
        theirs = ref.convert_open_clip_checkpoint(te, orig, prefix=prefix)
    else:
        strip = "cond_stage_model.transformer." if family == "sd1" else "conditioner.embedders.0.transformer."
        theirs = ref.convert_ldm_clip_checkpoint(orig, remove_prefix=strip)
    theirs = {k.removeprefix("text_model."): v for k, v in theirs.items() if "position_ids" not in k}
    mine = {k.removeprefix("text_model."): v for k, v in te.state_dict().items()}
    assert theirs.keys() == mine.keys()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)


@pytest.mark.parametrize("dtype,st", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_single_file_dtypes(dtype, st, tmp_path):
    model = models.from_pipeline(tiny_pipeline("sd1"))
    path = models.save_model(model, tmp_path / f"m-{dtype}.safetensors", dtype=dtype)
    with safe_open(str(path), "pt") as f:
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == st
        assert f.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids").dtype == torch.int64
    again = models.open_model(path, tokenizer=tokenizer_dir(tmp_path))
    assert again.unet.dtype == st
    want = {n: {k: v.to(st) for k, v in s.items()} for n, s in _states(model).items()}
    _assert_equal_states(want, _states(again))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folder_round_trip(family, tmp_path):
    model = models.from_pipeline(tiny_pipeline(family))
    folder = models.save_model(model, tmp_path / "folder")
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer" / "vocab.json").is_file()
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # transformers-4 names: loads in 4 and 5
    again = models.open_model(folder)
    assert again.family == family
    _assert_equal_states(_states(model), _states(again))


def test_folder_opens_in_the_asked_dtype_without_deprecation_warnings(tmp_path):
    """open_model names the dtype as the installed diffusers wants it (``dtype`` where ``torch_dtype`` is
    deprecated: the demo's output carried that warning)."""
    import warnings

    folder = models.save_model(models.from_pipeline(tiny_pipeline("sd1")), tmp_path / "folder", dtype="fp16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = models.open_model(folder, dtype=torch.float32)
    assert [str(w.message) for w in caught if "dtype" in str(w.message)] == []
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    half = models.open_model(folder, dtype=torch.float16)
    assert {p.dtype for p in half.unet.parameters()} == {torch.float16}


def test_overrides_and_sd2_epsilon(tmp_path):
    tok = tokenizer_dir(tmp_path)
    model = models.from_pipeline(tiny_pipeline("sd2", prediction_type="epsilon"))
    path = models.save_model(model, tmp_path / "eps.safetensors")
    with safe_open(str(path), "pt") as f:
        assert "v_pred" not in f.keys()
        assert f.metadata()["modelspec.prediction_type"] == "epsilon"
    assert models.open_model(path, tokenizer=tok).prediction_type == "epsilon"
    forced = models.open_model(path, tokenizer=tok, prediction_type="v")
    assert forced.prediction_type == "v_prediction" and forced.pipe.scheduler.config.prediction_type == "v_prediction"


def test_configs_fall_back_to_shipped_ones(tmp_path):
    """A file without sdlora's embedded configs is opened with the shipped config of its family: for the
    tiny model that means the weights do not fit, and the error says to pass --config."""
    model = models.from_pipeline(tiny_pipeline("sd1"))
    path = models.save_model(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare))  # no metadata
    plan = models.plan_single_file(bare)
    assert plan.family == "sd1" and plan.config_source == "sd15" and plan.prediction_type is None
    with pytest.raises(ModelError, match="--config"):
        models.open_model(bare, tokenizer=tokenizer_dir(tmp_path))
    # with the right config folder it opens exactly
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    models.write_folder_configs(cfg_dir, "sd1", model.configs(), model.tokenizers, "epsilon")
    again = models.open_model(bare, tokenizer=tokenizer_dir(tmp_path), config=cfg_dir)
    _assert_equal_states(_states(model), _states(again))


def _fake_hf_cache(root, repo: str, tok_src) -> None:
    snap = root / ("models--" + repo.replace("/", "--")) / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (snap / name).write_bytes((tok_src / name).read_bytes())
    refs = root / ("models--" + repo.replace("/", "--")) / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abcd")


def test_tokenizer_from_offline_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    _fake_hf_cache(cache, "openai/clip-vit-large-patch14", tokenizer_dir(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    model = models.from_pipeline(tiny_pipeline("sdxl"))
    path = models.save_model(model, tmp_path / "xl.safetensors")
    again = models.open_model(path)
    assert again.pipe.tokenizer.pad_token == "<|endoftext|>"
    assert again.pipe.tokenizer_2.pad_token == "!"  # SDXL's second tokenizer pads with "!" as in diffusers
    ids = again.pipe.tokenizer("a b").input_ids
    assert ids == model.pipe.tokenizer("a b").input_ids


# ------------------------------------------------------------------------------------------ errors
def test_missing_tokenizer_says_how_to_provide_one(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path = models.save_model(models.from_pipeline(tiny_pipeline("sd1")), tmp_path / "m.safetensors")
    with pytest.raises(ModelError) as err:
        models.open_model(path)
    text = str(err.value)
    assert "--tokenizer DIR" in text and "tokenizer/ subfolder" in text
    assert "models--openai--clip-vit-large-patch14" in text
    with pytest.raises(ModelError, match="no tokenizer there"):
        models.open_model(path, tokenizer=tmp_path)


def test_unknown_family(tmp_path):
    odd = tmp_path / "odd.safetensors"
    save_file({"some.other.weight": torch.zeros(2, 2)}, str(odd))
    with pytest.raises(ModelError, match="unknown model family"):
        models.open_model(odd)
    with pytest.raises(ModelError, match="unknown model family 'sd3'"):
        models.open_model(odd, family="sd3")
    with pytest.raises(ModelError, match="unknown prediction type"):
        models.open_model(odd, prediction_type="flow")


def test_missing_component_in_single_file(tmp_path):
    model = models.from_pipeline(tiny_pipeline("sd1"))
    path = models.save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    no_vae = {k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "novae.safetensors"), metadata=meta)
    with pytest.raises(ModelError, match=r"holds no VAE \(no first_stage_model\.\* keys\)"):
        models.open_model(tmp_path / "novae.safetensors", tokenizer=tokenizer_dir(tmp_path))
    some = dict(tensors)
    some.pop("model.diffusion_model.out.2.weight")
    save_file(some, str(tmp_path / "cut.safetensors"), metadata=meta)
    with pytest.raises(ModelError, match="1 of .* UNet tensors are missing"):
        models.open_model(tmp_path / "cut.safetensors", tokenizer=tokenizer_dir(tmp_path))
    # the wrong family forced on a file: the components it lacks are named
    with pytest.raises(ModelError, match="holds no text encoder .* not a complete SDXL checkpoint"):
        models.open_model(path, family="sdxl", tokenizer=tokenizer_dir(tmp_path),
                          config=_xl_config(tmp_path))


def _xl_config(tmp_path):
    xl = models.from_pipeline(tiny_pipeline("sdxl"))
    folder = tmp_path / "xlcfg"
    folder.mkdir()
    models.write_folder_configs(folder, "sdxl", xl.configs(), xl.tokenizers, "epsilon")
    return folder


def test_pickle_and_missing_paths_are_refused(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelError, match="pickle"):
        models.open_model(ckpt)
    with pytest.raises(ModelError, match="no such file or folder"):
        models.open_model(tmp_path / "nothing.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelError, match="not a diffusers model folder"):
        models.open_model(tmp_path / "folder")


def test_embedded_configs_are_json(tmp_path):
    model = models.from_pipeline(tiny_pipeline("sdxl"))
    path = models.save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    cfgs = json.loads(meta["sdlora.configs"])
    assert set(cfgs) == {"unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "pipeline"}
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
