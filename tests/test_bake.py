"""Bake: the baked weights are exactly the fused ones, the baked model generates what the adapters give on the
fly, in every format and dtype; baking streams and is atomic; the CLI command and its errors."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fake_adapters import make_adapter, tokenizer_dir
from sdlora.tools import bake as bake_mod
from sdlora import models
from sdlora.files import streaming
from sdlora.tools.bake import bake
from sdlora.cli import main
from sdlora.errors import AdapterFileError
from sdlora.inference.generate import generate
from sdlora.inference.stack import AdapterSpec, AdapterStack
from tiny import tiny_pipeline

torch.set_num_threads(1)
GEN = dict(steps=2, sampler="euler", progress=False)


def _setup(family: str, tmp_path) -> dict:
    """A base single file, a tokenizer and two adapters (LoCon on every layer, LoKr+DoRA)."""
    model = models.from_pipeline(tiny_pipeline(family))
    base = models.save_model(model, tmp_path / "base.safetensors")
    make_adapter(model, tmp_path / "locon.safetensors", algo="lora", preset="all", seed=1)
    make_adapter(model, tmp_path / "lokr.safetensors", algo="lokr", preset="attn", seed=2, dora=True)
    lbw = ",".join(["0.5"] + ["1"] * 9 + ["0.25"] + ["0.75"] * 9) if family == "sdxl" else "OUTALL"
    specs = [AdapterSpec(tmp_path / "locon.safetensors", 0.7, 0.3, lbw),
             AdapterSpec(tmp_path / "lokr.safetensors", -0.5)]
    return dict(base=base, tok=tokenizer_dir(tmp_path), specs=specs)


def _on_the_fly(setup: dict) -> models.BaseModel:
    model = models.open_model(setup["base"], tokenizer=setup["tok"])
    stack = AdapterStack(model)
    for s in setup["specs"]:
        stack.add(s.path, strength=s.strength, te_strength=s.te_strength, block_weights=s.block_weights)
    return model


def _states(model: models.BaseModel) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for n, m in model.pipeline_components().items()}


@pytest.mark.parametrize("family,fmt", [("sd1", "single-file"), ("sd2", "diffusers"), ("sdxl", "single-file")])
def test_bake_equals_adapters_on_the_fly(family, fmt, tmp_path):
    setup = _setup(family, tmp_path)
    live = _on_the_fly(setup)
    fly = generate(live, "a blue ball", seed=4, **GEN)[0].array
    live.stack.fuse()
    fused = _states(live)
    live.stack.unfuse()
    out = tmp_path / ("baked.safetensors" if fmt == "single-file" else "baked")
    bake(setup["base"], setup["specs"], out, format=fmt, tokenizer=setup["tok"], progress=False)
    baked = models.open_model(out, tokenizer=setup["tok"])
    assert baked.family == family and baked.prediction_type == live.prediction_type
    got = _states(baked)
    for name in fused:
        bad = [k for k in fused[name] if not torch.equal(fused[name][k], got[name][k])]
        assert not bad, (name, bad[:3])
    plain = live.unet.state_dict()
    changed = sum(not torch.equal(v, plain[k]) for k, v in got["unet"].items())
    assert changed > 50
    np.testing.assert_allclose(generate(baked, "a blue ball", seed=4, **GEN)[0].array, fly, atol=2e-4)


def test_bake_fp16_holds_the_fused_weights_rounded(tmp_path):
    setup = _setup("sd1", tmp_path)
    live = _on_the_fly(setup)
    fly = generate(live, "a blue ball", seed=4, **GEN)[0].array
    live.stack.fuse()
    fused = _states(live)
    out = bake(setup["base"], setup["specs"], tmp_path / "b16.safetensors", dtype="fp16", progress=False)
    with safe_open(str(out), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16", "I64"}  # I64: the CLIP position_ids
    baked = models.open_model(out, tokenizer=setup["tok"], dtype="fp32")
    got = _states(baked)
    for name in fused:
        assert all(torch.equal(fused[name][k].half().float(), got[name][k]) for k in fused[name]), name
    image = generate(baked, "a blue ball", seed=4, **GEN)[0].array
    np.testing.assert_allclose(image, fly, atol=2e-2)


def test_bake_streams_and_folder_or_file_sources_agree(tmp_path, monkeypatch):
    """At most a few source tensors are alive at once while baking (the model is never loaded whole), and a
    diffusers-folder source bakes to the same tensors as the single file."""
    setup = _setup("sdxl", tmp_path)
    folder = models.save_model(models.open_model(setup["base"], tokenizer=setup["tok"]), tmp_path / "folder")
    alive: set[int] = set()
    peak = [0, 0]
    real = streaming.LazyFile.get

    def spy(self, key):
        t = real(self, key)
        alive.add(id(t))
        weakref.finalize(t, alive.discard, id(t))
        peak[0] = max(peak[0], len(alive))
        peak[1] += 1
        return t

    monkeypatch.setattr(streaming.LazyFile, "get", spy)
    a = bake(setup["base"], setup["specs"], tmp_path / "a.safetensors", progress=False)
    assert peak[1] > 500 and peak[0] <= 3
    b = bake(folder, setup["specs"], tmp_path / "b.safetensors", progress=False)
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_bake_is_atomic(tmp_path, monkeypatch):
    setup = _setup("sd1", tmp_path)
    out = tmp_path / "out" / "baked.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    xl = models.from_pipeline(tiny_pipeline("sdxl"))
    make_adapter(xl, tmp_path / "xl.safetensors")
    with pytest.raises(AdapterFileError, match="SDXL adapter"):
        bake(setup["base"], [AdapterSpec(tmp_path / "xl.safetensors")], out, progress=False)
    calls = [0]
    real = bake_mod.fold_weight

    def failing(w, mods):
        calls[0] += 1
        if calls[0] > 20:
            raise KeyboardInterrupt
        return real(w, mods)

    monkeypatch.setattr(bake_mod, "fold_weight", failing)
    with pytest.raises(KeyboardInterrupt):
        bake(setup["base"], setup["specs"], out, progress=False)
    with pytest.raises(KeyboardInterrupt):
        bake(setup["base"], setup["specs"], tmp_path / "out" / "folder", format="diffusers", tokenizer=setup["tok"],
             progress=False)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["baked.safetensors"]


def test_cli_bake(tmp_path, capsys):
    setup = _setup("sd1", tmp_path)
    a, b = setup["specs"]
    out = tmp_path / "cli.safetensors"
    rc = main(["bake", "--model", str(setup["base"]), "--lora", f"{a.path}:0.7:0.3:lbw=OUTALL",
               "--lora", f"{b.path}:-0.5", "--out", str(out), "--quiet"])
    assert rc == 0 and "baked" in capsys.readouterr().out
    ref = bake(setup["base"], setup["specs"], tmp_path / "api.safetensors", progress=False)
    t1, t2 = load_file(str(out)), load_file(str(ref))
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    rc = main(["bake", "--model", str(tmp_path / "missing.safetensors"), "--lora", str(a.path),
               "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "no such file or folder" in err and not (tmp_path / "x.safetensors").exists()
    rc = main(["bake", "--model", str(setup["base"]), "--lora", str(tmp_path / "none.safetensors"),
               "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_write_streamed_hash_on_demand_and_write_back(tmp_path, monkeypatch):
    """write_streamed hashes only when asked (and then the whole file's sha256); the write-back it starts along
    the way (here every 1 KiB, through many small and a few large tensors) changes nothing in the bytes; an
    existing target is replaced only at the end, and a failing producer leaves it as it was."""
    import hashlib

    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(n, generator=g).to(dt)
               for i, (n, dt) in enumerate([(3, torch.float32), (700, torch.float16), (5, torch.bfloat16),
                                            (0, torch.float32), (2048, torch.float32), (1, torch.float16)])}
    tensors["i"] = torch.arange(7)

    def items(fail_at: int | None = None):
        def produce(k, i):
            if i == fail_at:
                raise KeyboardInterrupt
            return tensors[k]
        return [streaming.Item(k, t.dtype, tuple(t.shape), lambda k=k, i=i: produce(k, i))
                for i, (k, t) in enumerate(tensors.items())]

    calls = []
    real = streaming.os.posix_fadvise
    monkeypatch.setattr(streaming.os, "posix_fadvise", lambda *a: calls.append(a[1:3]) or real(*a))
    monkeypatch.setattr(streaming, "WRITEBACK_BYTES", 1024)
    out = tmp_path / "out.safetensors"
    assert streaming.write_streamed(out, items(), {"a": "b"}) is None
    assert len(calls) >= 2 and all(start + n <= out.stat().st_size for start, n in calls)
    got = load_file(str(out))
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"a": "b"}
    digest = streaming.write_streamed(out, items(), {"a": "b"}, sha256=True)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        streaming.write_streamed(out, items(fail_at=4), {"c": "d"})
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
