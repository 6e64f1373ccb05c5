"""Reliability of adapter files and inputs (issue 17, the adapter/input half): crafted files, non-finite
strengths, prompt tags that try to leave --lora-dir, bad generate arguments, a layer named twice, dataset
links and formats, the pickle/zip/npy refusals and Ctrl+C. Each bad input is an error sentence (checked
word for word where it matters) and the model is bit for bit what it was. All on the tiny SD1 model.
"""
from __future__ import annotations

import json
import math
import struct
import warnings
import zipfile

import numpy as np
import pytest
import safetensors.torch as st
import torch

from fake_adapters import make_adapter, tokenizer_dir
from sdlora import cli, models
from sdlora.adapters import AdapterFile, load_adapter
from sdlora.adapters.write import module_name
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.files import tensors as files
from sdlora.inference import prompt_tags
from sdlora.inference.pnginfo import locate_adapters
from sdlora.inference.generate import generate
from sdlora.inference.stack import AdapterSpec, AdapterStack
from sdlora.tools.bake import bake
from sdlora.trainers.config import DatasetSection
from sdlora.trainers.data import scan
from tiny import tiny_pipeline
from trainkit import make_images

CRAFTED = ("infinity_offset", "deep_header", "zero_d_down", "rank_0", "lokr_factor_0", "two_alphas")
PROBLEM = {  # the words each refusal must hold besides the file name
    "infinity_offset": "has the data offsets [0, Infinity]",
    "deep_header": "its header nests too deep",
    "zero_d_down": "lora_down.weight is a single number (a 0-d tensor)",
    "rank_0": "with a dimension of size 0",
    "lokr_factor_0": "lokr_w1 has the shape [0, 4], with a dimension of size 0",
    "two_alphas": "alpha holds 2 values (shape [2]); an alpha is one number",
}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny SD1 single file, its tokenizer, a valid LoCon, the model opened once, and the crafted files."""
    root = tmp_path_factory.mktemp("reliability")
    model = models.from_pipeline(tiny_pipeline("sd1"))
    base = models.save_model(model, root / "base.safetensors")
    valid = root / "valid.safetensors"
    make_adapter(model, valid, preset="attn-mlp", seed=3)
    tok = tokenizer_dir(root)
    opened = models.open_model(base, tokenizer=tok)
    crafted = {kind: _craft(kind, valid, root / f"{kind}.safetensors") for kind in CRAFTED}
    return dict(root=root, base=base, valid=valid, tok=tok, model=opened, crafted=crafted)


@pytest.fixture
def model(world):
    m = world["model"]
    yield m
    if m.stack is not None:
        m.stack.unfuse()
        m.stack.clear()


def _raw(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _first_lora(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(k for k in tensors if k.endswith(".lora_down.weight"))[0].removesuffix(".lora_down.weight")


def _craft(kind: str, valid, path):
    """Write the crafted file ``kind`` (see CRAFTED) built from the valid adapter; returns its path."""
    t = st.load_file(valid)
    name = _first_lora(t)
    down, up = t[f"{name}.lora_down.weight"], t[f"{name}.lora_up.weight"]
    if kind == "infinity_offset":
        header = json.dumps({f"{name}.lora_down.weight": {"dtype": "F32", "shape": [1],
                                                           "data_offsets": [0, math.inf]}}).encode()
        assert b"Infinity" in header
        path.write_bytes(_raw(header, b"\0" * 4))
        return path
    if kind == "deep_header":
        path.write_bytes(_raw(b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
        return path
    if kind == "zero_d_down":
        t[f"{name}.lora_down.weight"] = torch.tensor(0.5)
    elif kind == "rank_0":
        t[f"{name}.lora_down.weight"] = torch.zeros(0, down.shape[1])
        t[f"{name}.lora_up.weight"] = torch.zeros(up.shape[0], 0)
    elif kind == "lokr_factor_0":
        del t[f"{name}.lora_down.weight"], t[f"{name}.lora_up.weight"]
        t[f"{name}.lokr_w1"] = torch.zeros(0, 4)
        t[f"{name}.lokr_w2"] = torch.randn(up.shape[0], down.shape[1] // 4)
    elif kind == "two_alphas":
        t[f"{name}.alpha"] = torch.tensor([1.0, 2.0])
    st.save_file(t, path)
    return path


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.clone() for c, m in model.components().items() for k, v in m.state_dict().items()}


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) for root in model.components().values() for m in root.modules())


def _assert_same(model, snap: dict[str, torch.Tensor], hooks: int) -> None:
    now = _snapshot(model)
    assert [k for k in snap if not torch.equal(now[k], snap[k])] == []
    assert _hooks(model) == hooks


def _cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _model_args(world) -> list:
    return ["--model", world["base"], "--tokenizer", world["tok"]]


# ------------------------------------------------------------------------------------- crafted files
@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_file_is_a_sentence_in_inspect_bake_generate_and_the_stack(kind, world, model, capsys, tmp_path):
    path = world["crafted"][kind]
    expected = f"sdlora: error: {path}: "
    rc, err = _cli(capsys, "inspect", path)
    assert rc == 2 and err.startswith(expected) and PROBLEM[kind] in err and "Traceback" not in err
    out = tmp_path / "baked.safetensors"
    rc, err = _cli(capsys, "bake", *_model_args(world), "--lora", f"{path}:0.8", "--out", out, "--quiet")
    assert rc == 2 and err.startswith(expected) and PROBLEM[kind] in err and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left either
    rc, err = _cli(capsys, "generate", *_model_args(world), "--prompt", "a cat", "--lora", path, "--steps", 1,
                   "--out", tmp_path / "png", "--quiet")
    assert rc == 2 and err.startswith(expected) and PROBLEM[kind] in err and not (tmp_path / "png").exists()
    # the stack, bypass and fused (a valid adapter already folded in): refused, the model bit for bit as it was
    stack = AdapterStack(model)
    for fused in (False, True):
        if fused:
            stack.add(world["valid"], strength=0.7)
            stack.fuse()
        snap, hooks = _snapshot(model), _hooks(model)
        with pytest.raises(AdapterFileError) as info:
            stack.add(path, name="crafted")
        assert str(info.value).startswith(f"{path}: ") and PROBLEM[kind] in str(info.value)
        _assert_same(model, snap, hooks)
        assert "crafted" not in stack


def test_fp8_adapter_loads_upcast_like_its_float32_copy(world, model, capsys, tmp_path):
    """Decision: an fp8 (float8_e4m3fn) file loads, each tensor upcast to float32 as A1111/ComfyUI apply
    one; inspect names the stored dtype. Its effect equals the float32 file of the same (rounded) values."""
    t = st.load_file(world["valid"])
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in t.items()}
    st.save_file(fp8, tmp_path / "fp8.safetensors")
    st.save_file({k: v.float() for k, v in fp8.items()}, tmp_path / "upcast.safetensors")
    rc, _ = _cli(capsys, "inspect", tmp_path / "fp8.safetensors", "--json")
    assert rc == 0
    # inspect prints JSON on stdout; read it through the function the command uses
    from sdlora.commands.actions.inspect import inspect_file
    info = inspect_file(tmp_path / "fp8.safetensors")
    assert info["dtype"] == "float8_e4m3fn" and info["modules"] == len(AdapterFile.read(world["valid"]).modules)
    gen = dict(seed=5, steps=1, sampler="euler", progress=False)
    stack = AdapterStack(model)
    stack.add(tmp_path / "upcast.safetensors", name="ref")
    ref = generate(model, "a cat", **gen)[0].array
    stack.remove("ref")
    plain = generate(model, "a cat", **gen)[0].array
    stack.add(tmp_path / "fp8.safetensors", name="fp8")
    np.testing.assert_array_equal(generate(model, "a cat", **gen)[0].array, ref)
    assert not np.array_equal(ref, plain)


# --------------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("spec", ["nan", "1e309", "-inf", "1:nan", "0.5:inf",
                                  "lbw=" + ",".join(["1"] * 16 + ["nan"])])
def test_cli_bake_refuses_non_finite_strengths(spec, world, capsys, tmp_path):
    out = tmp_path / "baked.safetensors"
    rc, err = _cli(capsys, "bake", *_model_args(world), "--lora", f"{world['valid']}:{spec}", "--out", out, "--quiet")
    assert rc == 2 and "must be finite numbers" in err and not out.exists()


def test_api_refuses_non_finite_strengths_and_block_weights(world, model, tmp_path):
    stack = AdapterStack(model)
    snap, hooks = _snapshot(model), _hooks(model)
    bad = (dict(strength=math.nan), dict(te_strength=math.inf), dict(block_weights=[1.0] * 16 + [math.nan]))
    for kw in bad:
        with pytest.raises(ConfigError, match="must be finite numbers"):
            stack.add(world["valid"], **kw)
    _assert_same(model, snap, hooks)
    stack.add(world["valid"], strength=0.5)
    for kw in (dict(strength=math.inf), dict(te_strength=math.nan)):
        with pytest.raises(ConfigError, match="must be finite numbers"):
            stack.set_strength("valid", **kw)
    assert stack["valid"].strength == 0.5 and stack["valid"].te_strength is None
    with pytest.raises(ConfigError, match="must be finite numbers"):
        bake(world["base"], [AdapterSpec(world["valid"], math.nan)], tmp_path / "b.safetensors", progress=False)
    for tag in ("<lora:valid:nan>", "<lora:valid:1:inf>", "<lora:valid:te=nan>"):
        with pytest.raises(ConfigError, match="must be finite numbers"):
            prompt_tags.parse_prompt(f"a cat {tag}")
    assert not (tmp_path / "b.safetensors").exists()


def test_bake_never_writes_non_finite_weights(world, tmp_path):
    """A finite but huge strength (beyond float32) overflows the fold: refused while writing, nothing renamed
    into place."""
    out = tmp_path / "baked.safetensors"
    with pytest.raises(AdapterFileError, match=r"gives NaN or Inf values \(the base weight is finite\)"):
        bake(world["base"], [AdapterSpec(world["valid"], 1e300)], out, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(AdapterFileError, match="for the output dtype"):  # finite in fp32, inf once cast to fp16
        bake(world["base"], [AdapterSpec(world["valid"], 1e7)], out, dtype="fp16", progress=False)
    assert list(tmp_path.iterdir()) == []
    bake(world["base"], [AdapterSpec(world["valid"], 1e7)], out, progress=False)  # fp32 holds it
    assert all(torch.isfinite(v).all() for v in st.load_file(out).values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ prompt tags
def test_prompt_tags_resolve_inside_the_lora_dir_only(world, model, capsys, tmp_path):
    loras, outside = tmp_path / "loras", tmp_path / "outside"
    (loras / "styles").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.safetensors"
    st.save_file({k: v * 2 for k, v in st.load_file(world["valid"]).items()}, secret)  # its own hash
    (loras / "styles" / "ink.safetensors").write_bytes(world["valid"].read_bytes())
    (loras / "leak.safetensors").symlink_to(secret)  # a link inside that leads out
    (loras / "up").symlink_to(outside, target_is_directory=True)
    assert prompt_tags.find_adapter_file("ink", loras) == loras / "styles" / "ink.safetensors"
    assert prompt_tags.find_adapter_file("styles/ink", loras) == loras / "styles" / "ink.safetensors"
    for name in ("../outside/secret", str(outside / "secret"), str(secret)):
        with pytest.raises(AdapterFileError, match=r"names an adapter inside --lora-dir .* without '\.\.'"):
            prompt_tags.find_adapter_file(name, loras)
    for name in ("leak", "up/secret", "secret"):
        with pytest.raises(AdapterFileError, match=r"is not found: .*it holds: ink\)"):
            prompt_tags.find_adapter_file(name, loras)
    assert prompt_tags.adapter_files(loras) == [loras / "styles" / "ink.safetensors"]
    # a re-render looks adapters up by hash: the link that leads out is not hashed, so not found
    secret_hash = files.short_hash(secret)
    with pytest.raises(AdapterFileError, match=f"not in {loras}: secret \\(hash {secret_hash}\\)"):
        locate_adapters(["secret"], {"secret": secret_hash}, loras)
    snap = _snapshot(model)
    with pytest.raises(AdapterFileError, match="without"):
        generate(model, "a cat <lora:../outside/secret:1>", lora_dir=loras, steps=1, progress=False)
    _assert_same(model, snap, 0)
    rc, err = _cli(capsys, "generate", *_model_args(world), "--prompt", f"a cat <lora:{secret}:1>",
                   "--lora-dir", loras, "--steps", 1, "--out", tmp_path / "png", "--quiet")
    assert rc == 2 and "names an adapter inside --lora-dir" in err and not (tmp_path / "png").exists()


# ------------------------------------------------------------------------------ generate arguments
@pytest.mark.parametrize("extra,words", [
    (["--steps", "0"], "--steps 0: give 1 or more sampling steps"),
    (["--width", "33"], "--width 33: give a multiple of 8"),
    (["--height", "4"], "--height 4: give a multiple of 8"),
    (["--cfg", "nan"], "--cfg nan: give a finite guidance scale"),
    (["--out", "FILE"], "this is a file; --out names a folder"),
])
def test_generate_arguments_are_sentences_before_any_work(extra, words, capsys, tmp_path):
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"not yours")
    extra = [str(existing) if e == "FILE" else e for e in extra]
    args = ["generate", "--model", tmp_path / "no-model-here", "--prompt", "a cat", "--out", tmp_path / "out", *extra]
    rc, err = _cli(capsys, *args)  # the model path does not exist: the check must come first
    assert rc == 2 and words in err and "no-model-here" not in err
    assert existing.read_bytes() == b"not yours" and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ a layer named twice
def test_a_layer_named_twice_refuses_a_strict_load(world, model):
    t = st.load_file(world["valid"])
    name = module_name("te1", "encoder.layers.0.mlp.fc1", "sd1", None, "kohya")
    peft = module_name("te1", "encoder.layers.0.mlp.fc1", "sd1", None, "peft")
    kohya = f"{name}.lora_down.weight"
    assert kohya in t and name != peft
    t[f"{peft}.lora_A.weight"] = t[kohya].clone()
    t[f"{peft}.lora_B.weight"] = t[f"{name}.lora_up.weight"].clone()
    path = world["root"] / "twice.safetensors"
    st.save_file(t, path)
    snap = _snapshot(model)
    with pytest.raises(AdapterFileError) as info:
        load_adapter(path, model.components(), "sd1")
    msg = str(info.value)
    assert "1 layers are named twice" in msg and f"{name} and {peft}" in msg  # (sorted) and "refused (strict)" in msg
    _assert_same(model, snap, 0)
    with pytest.raises(AdapterFileError, match="named twice"):
        AdapterStack(model).add(path)
    _assert_same(model, snap, 0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net, report = load_adapter(path, model.components(), "sd1", strict=False, attach=False)
    assert report.duplicates and len(net) == len(AdapterFile.read(world["valid"]).modules)
    assert any("named twice" in str(w.message) for w in seen)


# ------------------------------------------------------------------------------------ dataset scan
def test_scan_names_broken_links_unsupported_formats_and_a_subset_linking_to_the_root(tmp_path):
    root = make_images(tmp_path / "data", n=3)
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "gone.png").symlink_to(tmp_path / "missing.png")
    (root / "phone.heic").write_bytes(b"\0" * 64)
    (root / "old.jfif").write_bytes((root / "img0.png").read_bytes())
    (root / "3_again").symlink_to(root, target_is_directory=True)  # kohya N_x -> .
    make_images(root / "2_real", n=2, prefix="real")
    (root / "2_twin").symlink_to(root / "2_real", target_is_directory=True)
    ds = scan(DatasetSection(path=str(root), min_image_side=16))
    why = {p.name: reason for p, reason in ds.report.skipped}
    assert why["loop.png"] == "a symlink loop; skipped"
    assert why["gone.png"] == "a dangling symlink (its target is missing); skipped"
    assert why["phone.heic"].startswith(".heic images are not read (use .png, .jpg")
    assert "a .jfif is a JPEG: rename it to .jpg" in why["old.jfif"]
    assert why["3_again"].startswith("links to ") and "already in the dataset" in why["3_again"]
    assert "already in the dataset" in why["2_twin"]
    assert sorted(it.path.name for it in ds.items) == ["img0.png", "img1.png", "img2.png", "real0.png", "real1.png"]
    assert [s.repeats for s in ds.subsets if s.path.name == "2_real"] == [2]
    text = ds.report.format()
    for name in ("loop.png", "gone.png", "phone.heic", "old.jfif", "3_again", "2_twin"):
        assert name in text


# ------------------------------------------------------------------------------ pickle, zip, npy, ^C
def test_pickle_refusal_names_a_flag_only_where_there_is_one(world, model, capsys, tmp_path):
    pkl = tmp_path / "old.pt"
    torch.save(st.load_file(world["valid"]), pkl)
    rc, err = _cli(capsys, "inspect", pkl)
    assert rc == 2 and "this is a pickle (.ckpt/.pt) file" in err and "or pass --allow-pickle" in err
    rc, err = _cli(capsys, "bake", *_model_args(world), "--lora", pkl, "--out", tmp_path / "b.safetensors")
    assert rc == 2 and "this is a pickle" in err and "allow" not in err.replace("allowed", "")
    with pytest.raises(AdapterFileError) as info:
        AdapterStack(model).add(pkl)
    assert "this is a pickle" in str(info.value) and "allow" not in str(info.value)
    with pytest.raises(AdapterFileError, match=r"or pass allow_pickle=True"):
        load_adapter(pkl, model.components(), "sd1")
    assert cli.main(["inspect", str(pkl), "--allow-pickle"]) == 0


def test_zip_and_npy_are_called_what_they_are(world, capsys, tmp_path):
    npy = tmp_path / "weights.safetensors"
    np.save(tmp_path / "a.npy", np.ones((4, 4), np.float32))
    npy.write_bytes((tmp_path / "a.npy").read_bytes())
    archive = tmp_path / "pack.safetensors"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("valid.safetensors", world["valid"].read_bytes())
    for path, words in ((npy, "this is a NumPy array file (.npy), not safetensors"),
                        (archive, "this is a zip archive (not a torch save), not safetensors")):
        rc, err = _cli(capsys, "inspect", path)
        assert rc == 2 and words in err and "pickle" not in err
        rc, err = _cli(capsys, "inspect", path, "--allow-pickle")
        assert rc == 2 and words in err and "pickle" not in err


@pytest.mark.parametrize("where", ["build_parser", "action"])
def test_ctrl_c_during_start_up_is_one_line(where, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, where, interrupted)
    rc, err = _cli(capsys, "inspect", "x.safetensors")
    assert rc == 130 and err == "sdlora: interrupted\n"
