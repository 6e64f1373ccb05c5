"""Generation: stacked adapters equal the hand-made sum of their ΔW, fused == bypass, <lora:...> prompt tags,
seeds, PNG parameters as A1111 writes them, strength sweeps, and the errors of bad input (CLI exit codes)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from fake_adapters import make_adapter, tokenizer_dir
from sdlora.files import tensors as files
from sdlora import models
from sdlora.cli import main
from sdlora.inference.generate import generate, read_parameters, sweep
from sdlora.inference.prompt_tags import parse_prompt
from sdlora.inference.stack import AdapterStack
from tiny import tiny_pipeline

torch.set_num_threads(1)
GEN = dict(steps=3, sampler="euler", progress=False)


def _model(family: str = "sd1") -> models.BaseModel:
    return models.from_pipeline(tiny_pipeline(family))


def _manual_delta(module) -> torch.Tensor:
    """γ·ΔW of a LoRA / LoHa module computed here from its raw factors (not through sdlora's math)."""
    shape = tuple(module.base.weight.shape)
    gamma = float(module.alpha) / module.rank
    if module.algo == "lora":
        up = module.lora_up.weight.flatten(1)
        down = module.lora_down.weight.flatten(1)
        return (up @ down).reshape(shape) * gamma
    assert module.algo == "loha"
    a = module.hada_w1_a @ module.hada_w1_b
    b = module.hada_w2_a @ module.hada_w2_b
    return (a * b).reshape(shape) * gamma


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_two_stacked_adapters_equal_manual_sum_of_delta_w(family, tmp_path):
    donor = _model(family)
    lora = make_adapter(donor, tmp_path / "lora.safetensors", algo="lora", preset="full", seed=1)
    loha = make_adapter(donor, tmp_path / "loha.safetensors", algo="loha", preset="attn-mlp", seed=2)
    prompt = "a red cube"
    base = generate(_model(family), prompt, seed=3, **GEN)[0].array

    model = _model(family)
    stack = AdapterStack(model)
    stack.add(tmp_path / "lora.safetensors", strength=0.7, te_strength=0.4)
    stack.add(tmp_path / "loha.safetensors", strength=-0.5)
    stacked = generate(model, prompt, seed=3, **GEN)[0].array

    manual = _model(family)
    roots = manual.components()
    with torch.no_grad():
        for network, unet_s, te_s in ((lora, 0.7, 0.4), (loha, -0.5, -0.5)):
            for component, path, module in network.items_by_module():
                w = roots[component].get_submodule(path).weight
                w += (unet_s if component == "unet" else te_s) * _manual_delta(module)
    expected = generate(manual, prompt, seed=3, **GEN)[0].array

    assert np.abs(stacked - base).max() > 0.02  # the adapters do change the picture
    np.testing.assert_allclose(stacked, expected, atol=2e-4)
    stack.fuse()
    np.testing.assert_allclose(generate(model, prompt, seed=3, **GEN)[0].array, stacked, atol=2e-4)
    stack.unfuse()


def test_prompt_tags_equal_stack_adapters(tmp_path):
    donor = _model()
    loras = tmp_path / "loras"
    loras.mkdir()
    make_adapter(donor, loras / "ink.safetensors", algo="lora", preset="full", seed=5)
    model = _model()
    tagged = generate(model, "a cat <lora:ink:0.6>", seed=1, lora_dir=loras, **GEN)[0]
    assert model.stack is not None and len(model.stack) == 0  # tag adapters last for one call only
    split = generate(model, "a cat <lora:ink:0.3:0.6>", seed=1, lora_dir=loras, **GEN)[0]

    ref = _model()
    st = AdapterStack(ref)
    st.add(loras / "ink.safetensors", strength=0.6)
    same = generate(ref, "a cat", seed=1, **GEN)[0]
    np.testing.assert_allclose(tagged.array, same.array, atol=1e-6)
    st.set_strength("ink", 0.6, te_strength=0.3)
    np.testing.assert_allclose(split.array, generate(ref, "a cat", seed=1, **GEN)[0].array, atol=1e-6)
    # a tag naming an adapter of the stack sets its strengths for the call and restores them after
    st.set_strength("ink", 0.1, te_strength=None)
    again = generate(ref, "a cat <lora:ink:0.6>", seed=1, **GEN)[0]
    np.testing.assert_allclose(again.array, tagged.array, atol=1e-6)
    assert st["ink"].strength == 0.1 and st["ink"].te_strength is None


def test_parse_prompt_syntax():
    clean, tags = parse_prompt("a <lora:ink:0.6> cat, <lyco:x:0.2:0.9:lbw=OUTD> <lora:y:te=0.1:unet=2>")
    assert clean == "a cat,"
    assert [(t.name, t.te_strength, t.strength, t.block_weights) for t in tags] == [
        ("ink", 0.6, 0.6, None), ("x", 0.2, 0.9, "OUTD"), ("y", 0.1, 2.0, None)]


def test_seeds_follow_a1111_convention():
    model = _model()
    two = generate(model, "a dog", seed=10, count=2, **GEN)
    assert [g.seed for g in two] == [10, 11]
    one = generate(model, "a dog", seed=11, **GEN)[0]
    np.testing.assert_array_equal(two[1].array, one.array)
    assert not np.array_equal(two[0].array, two[1].array)


def _fields(line: str) -> dict[str, str]:
    """A1111's 'key: value, key: "quoted, value"' settings line."""
    out, key, buf, quoted = {}, None, "", False
    for ch in line + ",":
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            k, _, v = buf.strip().partition(": ")
            out[k] = v
            buf = ""
            continue
        buf += ch
    return out


@pytest.fixture
def sd1_file(tmp_path):
    model = _model()
    path = models.save_model(model, tmp_path / "base.safetensors")
    loras = tmp_path / "loras"
    loras.mkdir()
    make_adapter(model, loras / "ink.safetensors", algo="loha", seed=7)
    make_adapter(model, tmp_path / "style.safetensors", algo="lora", preset="full", seed=8)
    return dict(model=path, tok=tokenizer_dir(tmp_path), loras=loras, style=tmp_path / "style.safetensors",
                out=tmp_path / "out")


def test_cli_generate_writes_pngs_with_a1111_parameters(sd1_file):
    f = sd1_file
    rc = main(["generate", "--model", str(f["model"]), "--tokenizer", str(f["tok"]), "--prompt",
               "a cat <lora:ink:0.5>", "--negative-prompt", "blurry", "--lora", f"{f['style']}:0.8:0.4",
               "--lora-dir", str(f["loras"]), "--seed", "42", "--steps", "2", "--count", "2",
               "--sampler", "DPM++ 2M Karras", "--out", str(f["out"]), "--quiet"])
    assert rc == 0
    pngs = sorted(p.name for p in f["out"].glob("*.png"))
    assert pngs == ["00000-42.png", "00001-43.png"]
    text = read_parameters(f["out"] / "00001-43.png")
    prompt, negative, settings = text.split("\n")
    assert prompt == "a cat <lora:ink:0.5> <lora:style:0.4:0.8>"
    assert negative == "Negative prompt: blurry"
    fields = _fields(settings)
    model_hash = hashlib.sha256(f["model"].read_bytes()).hexdigest()[:10]
    assert fields["Steps"] == "2" and fields["Sampler"] == "DPM++ 2M Karras" and fields["CFG scale"] == "7"
    assert fields["Seed"] == "43" and fields["Size"] == "32x32" and fields["Model"] == "base"
    assert fields["Model hash"] == model_hash
    assert fields["Lora hashes"] == (f'"style: {files.short_hash(f["style"])}, '
                                     f'ink: {files.short_hash(f["loras"] / "ink.safetensors")}"')
    # a second run continues the numbering
    assert main(["generate", "--model", str(f["model"]), "--tokenizer", str(f["tok"]), "--prompt", "x",
                 "--steps", "1", "--seed", "1", "--out", str(f["out"]), "--quiet", "--mode", "fused"]) == 0
    assert (f["out"] / "00002-1.png").is_file()


def test_sweep_grid_holds_each_strength_and_seed(sd1_file):
    f = sd1_file
    model = models.open_model(f["model"], tokenizer=f["tok"])
    AdapterStack(model).add(f["style"], strength=0.9)
    grid = sweep(model, "a cat", [0.0, 1.0], seed=7, count=2, steps=2, progress=False)
    sheet = np.asarray(grid.image)
    windows = sliding_window_view(sheet, (32, 32, 3))[..., 0, :, :, :]

    def contains(array: np.ndarray) -> bool:
        cell = (array * 255).round().clip(0, 255).astype(np.uint8)
        return bool((windows == cell).all(axis=(-3, -2, -1)).any())

    plain = _model_from(f)
    for seed in (7, 8):
        assert contains(generate(plain, "a cat", seed=seed, steps=2, progress=False)[0].array)
    model.stack.set_strength("style", 1.0)
    assert contains(generate(model, "a cat", seed=8, steps=2, progress=False)[0].array)
    assert model.stack["style"].strength == 1.0
    assert 'Sweep: "style: 0, 1; seeds 7..8"' in grid.parameters
    rc = main(["generate", "--model", str(f["model"]), "--tokenizer", str(f["tok"]), "--prompt", "a cat",
               "--lora", str(f["style"]), "--sweep", "0,0.5,1", "--seed", "3", "--steps", "1",
               "--out", str(f["out"]), "--quiet"])
    assert rc == 0
    text = read_parameters(f["out"] / "00000-sweep-3.png")
    assert 'Sweep: "style: 0, 0.5, 1; seeds 3..3"' in text


def _model_from(f) -> models.BaseModel:
    return models.open_model(f["model"], tokenizer=f["tok"])


def test_sd2_v_prediction_generates(tmp_path):
    model = _model("sd2")
    assert model.prediction_type == "v_prediction"
    out = generate(model, "a tree", seed=1, steps=2, sampler="dpm++ 2m", progress=False)[0]
    assert out.array.shape == (32, 32, 3) and np.isfinite(out.array).all()


# ------------------------------------------------------------------------------------------ errors
def _run(capsys, args: list[str]) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err


def test_cli_errors_are_clear(sd1_file, capsys, tmp_path, monkeypatch):
    f = sd1_file
    common = ["generate", "--model", str(f["model"]), "--tokenizer", str(f["tok"]), "--steps", "1",
              "--out", str(f["out"]), "--quiet"]
    rc, err = _run(capsys, common + ["--prompt", "x", "--sampler", "warp drive"])
    assert rc == 2 and "unknown sampler 'warp drive'; use one of: euler, euler a" in err
    assert "Traceback" not in err
    rc, err = _run(capsys, common + ["--prompt", "x <lora:nope:0.5>", "--lora-dir", str(f["loras"])])
    assert rc == 2 and "<lora:nope> is not found" in err and "it holds: ink" in err
    rc, err = _run(capsys, common + ["--prompt", "x <lora:ink:0.5>"])
    assert rc == 2 and "--lora-dir" in err
    rc, err = _run(capsys, common + ["--prompt", "x", "--lora", f"{f['style']}:bad=1"])
    assert rc == 2 and "FILE[:STRENGTH[:TE_STRENGTH]]" in err
    rc, err = _run(capsys, common + ["--prompt", "x", "--sweep", "0,a"])
    assert rc == 2 and "comma-separated strengths" in err
    xl = _model("sdxl")
    make_adapter(xl, tmp_path / "xl.safetensors")
    rc, err = _run(capsys, common + ["--prompt", "x", "--lora", str(tmp_path / "xl.safetensors")])
    assert rc == 2 and "SDXL adapter" in err and "SD 1.x" in err
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "no-cache"))
    rc, err = _run(capsys, ["generate", "--model", str(f["model"]), "--prompt", "x", "--out", str(f["out"])])
    assert rc == 2 and "needs a CLIP tokenizer" in err and "--tokenizer DIR" in err
    assert sorted(p.name for p in f["out"].glob("*")) == []  # nothing written by failed runs
