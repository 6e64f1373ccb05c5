"""Adapter files that a user can get wrong, and the file-level promises: every bad input gives an
AdapterFileError whose message says what is wrong (checked word for word) and leaves the model exactly as it
was; writes are atomic; the kohya hashes and ss_* metadata follow kohya's definitions; fp16/bf16 on request.

All on the tiny SD1/SDXL components (tests/tiny.py), offline.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import warnings

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from sdlora.files import tensors as files
from sdlora.adapters import AdapterFile, build_metadata, load_adapter, save_adapter
from sdlora.errors import AdapterFileError
from sdlora.networks import Network, NetworkConfig
from tiny import tiny_components

BOGUS = "lora_unet_foo_bar.lora_down.weight"


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads per op
    make every forward pass 10x slower (measured: 0.07 s vs 0.9-1.7 s per tiny UNet call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models(parts: dict) -> dict:
    models = {"unet": parts["unet"], "te1": parts["text_encoder"]}
    if "text_encoder_2" in parts:
        models["te2"] = parts["text_encoder_2"]
    return models


def _randomise(net: Network, seed: int = 0, std: float = 0.1) -> Network:
    """Random adapter parameters (ΔW ≠ 0); DoRA magnitudes are perturbed around their initial row norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("dora_scale"):
                p.mul_(1 + 0.1 * noise)
            else:
                p.copy_(noise * std)
    return net


def _network(parts: dict, seed: int = 0, **cfg) -> Network:
    cfg = {"algo": "lora", "rank": 4, "alpha": 2, "preset": "full", **cfg}
    return _randomise(Network.create(_models(parts), NetworkConfig(**cfg)), seed)


def _snapshot(models: dict) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.clone() for c, m in models.items() for k, v in m.state_dict().items()}


def _hooks(models: dict) -> int:
    return sum(len(m._forward_hooks) for root in models.values() for m in root.modules())


def _assert_untouched(models: dict, snap: dict[str, torch.Tensor]) -> None:
    now = _snapshot(models)
    assert now.keys() == snap.keys()
    changed = [k for k in snap if not torch.equal(now[k], snap[k])]
    assert changed == [], f"weights changed: {changed[:5]}"
    assert _hooks(models) == 0, "an adapter was attached"


def _refused(path, models: dict, family: str = "sd1", **kw) -> str:
    """Load ``path``, expect AdapterFileError, check nothing changed; return the message."""
    snap = _snapshot(models)
    with pytest.raises(AdapterFileError) as info:
        load_adapter(path, models, family, **kw)
    _assert_untouched(models, snap)
    return str(info.value)


def _probe(models: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 500, (1, 77), generator=g)
    x = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        h = models["te1"](ids)[0]
        return {"te1": h, "unet": models["unet"](x, torch.tensor([10]), h).sample}


def _assert_same_network(a: Network, b: Network) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def valid(tmp_path, sd1) -> dict:
    """A valid SD1 LoCon file (rank 4, alpha 2) written by sdlora, and fresh models to load it into."""
    net = _network(sd1)
    path = tmp_path / "valid.safetensors"
    save_adapter(net, path, "sd1")
    return {"path": path, "net": net, "models": _models(tiny_components("sd1")),
            "modules": len(net), "tensors": safetensors.torch.load_file(path)}


# ------------------------------------------------------------------------------------------ bad files
def test_not_safetensors_random_bytes_and_text(tmp_path, valid):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).tolist()))
    msg = _refused(junk, valid["models"])
    assert "not a safetensors file" in msg and "corrupt or of another format" in msg
    text = tmp_path / "notes.safetensors"
    text.write_text("this is a text file that someone renamed to .safetensors\n" * 20)
    msg = _refused(text, valid["models"])
    assert "not a safetensors file" in msg and str(text) in msg
    # a header that is JSON but not an object, with a plausible length
    weird = tmp_path / "weird.safetensors"
    weird.write_bytes(struct.pack("<Q", 2) + b"[]")
    assert "its header is not valid JSON" in _refused(weird, valid["models"])


def test_truncated_file(tmp_path, valid):
    data = valid["path"].read_bytes()
    cut = tmp_path / "half.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    msg = _refused(cut, valid["models"])
    assert "truncated" in msg and "download or save it again" in msg
    assert f"the file holds {len(data) // 2}" in msg
    # cut inside the header too
    (n,) = struct.unpack("<Q", data[:8])
    cut.write_bytes(data[: 8 + n // 2])
    msg = _refused(cut, valid["models"])
    assert f"truncated: the header says {n} bytes but the file holds {8 + n // 2}" in msg


def test_header_too_large(tmp_path, valid):
    big = tmp_path / "big.safetensors"
    n = 200 * 1024 * 1024
    big.write_bytes(struct.pack("<Q", n) + b'{"a": 1}' + b" " * 64)
    msg = _refused(big, valid["models"])
    assert f"header length {n} bytes is larger than the {files.MAX_HEADER} byte limit" in msg
    assert "not a safetensors file" in msg


def test_empty_file_and_no_tensors(tmp_path, valid):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    msg = _refused(empty, valid["models"])
    assert "file is empty or truncated (0 bytes)" in msg
    none = tmp_path / "none.safetensors"
    safetensors.torch.save_file({}, str(none), metadata={"ss_network_dim": "4"})
    msg = _refused(none, valid["models"])
    assert "the file holds no tensors; it is not an adapter" in msg
    missing = tmp_path / "missing.safetensors"
    assert "no such file; check the path" in _refused(missing, valid["models"])


def test_pickle_refused_by_default_and_loaded_on_request(tmp_path, valid):
    pkl = tmp_path / "old.pt"
    torch.save(valid["tensors"], pkl)
    msg = _refused(pkl, valid["models"])
    assert "this is a pickle (.ckpt/.pt) file, not safetensors" in msg
    # load_adapter has allow_pickle=, so it names it; it has no CLI flag to name (tests/test_reliability_files.py)
    assert "--allow-pickle" not in msg and "allow_pickle=True" in msg and "weights_only=True" in msg
    # a .ckpt-style {"state_dict": ...} wrapper too
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": valid["tensors"], "epoch": 3}, ckpt)
    assert "pickle" in _refused(ckpt, valid["models"])

    models = valid["models"]
    ref, _ = load_adapter(valid["path"], models, "sd1", attach=False)
    for source in (pkl, ckpt):
        net, report = load_adapter(source, models, "sd1", allow_pickle=True, attach=False)
        assert report.ok and report.total_matched == valid["modules"]
        _assert_same_network(net, ref)
    # and it applies like the safetensors file
    net.attach()
    from_pickle = _probe(models)
    net.detach()
    ref.attach()
    from_st = _probe(models)
    ref.detach()
    for k in from_st:
        assert torch.equal(from_pickle[k], from_st[k])


def test_pickle_that_runs_code_is_refused_even_with_allow_pickle(tmp_path, valid):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    msg = _refused(bad, valid["models"], allow_pickle=True)
    assert "cannot be read as a weights-only pickle" in msg


def test_file_for_another_family(tmp_path, sd1, sdxl):
    xl = tmp_path / "xl.safetensors"
    save_adapter(_network(sdxl, preset="attn-mlp"), xl, "sdxl")
    msg = _refused(xl, _models(sd1), "sd1")
    assert "this is an SDXL adapter; the model is SD 1.x. Use it with an SDXL model" in msg
    # the other way round, told by the metadata (the tiny widths match no real model)
    v1 = tmp_path / "v1.safetensors"
    save_adapter(_network(tiny_components("sd1"), preset="attn-mlp"), v1, "sd1")
    msg = _refused(v1, _models(sdxl), "sdxl")
    assert "this is an SD 1.x adapter; the model is SDXL" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_tensors(tmp_path, valid, bad):
    tensors = dict(valid["tensors"])
    key = sorted(k for k in tensors if k.endswith("lora_up.weight"))[3]
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = bad
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    msg = _refused(path, valid["models"])
    assert f"1 tensor(s) hold NaN or Inf values (e.g. {key})" in msg
    assert "retrain or use an earlier checkpoint" in msg


def test_strict_refuses_unmatched_keys_nonstrict_loads_the_rest(tmp_path, valid):
    tensors = dict(valid["tensors"])
    tensors[BOGUS] = torch.zeros(4, 32)
    path = tmp_path / "extra.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    msg = _refused(path, valid["models"])
    assert "refused (strict)" in msg and "The model is unchanged" in msg
    assert re.search(rf"\b1 keys? match(es)? no layer of the model: {re.escape(BOGUS)}", msg), msg
    assert f"matched {valid['modules']} modules" in msg
    assert "strict=False" in msg and "--no-strict" in msg

    models = valid["models"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, report = load_adapter(path, models, "sd1", strict=False)
    ours = [w for w in caught if "partial load" in str(w.message)]
    assert len(ours) == 1 and len(caught) == 1, [str(w.message) for w in caught]
    assert BOGUS in str(ours[0].message) and f"matched {valid['modules']} modules" in str(ours[0].message)
    assert report.unmatched_keys == [BOGUS] and not report.ok
    assert report.total_matched == valid["modules"]
    assert _hooks(models) == valid["modules"]  # attached: every module of the rest
    net.detach()
    clean, clean_report = load_adapter(valid["path"], models, "sd1", attach=False)
    assert clean_report.ok
    _assert_same_network(net, clean)


def test_unknown_suffix_is_unmatched(tmp_path, valid):
    tensors = dict(valid["tensors"])
    name = next(k for k in tensors if k.endswith("lora_up.weight")).rsplit(".", 2)[0]
    tensors[f"{name}.something_new"] = torch.zeros(3)
    path = tmp_path / "suffix.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    msg = _refused(path, valid["models"])
    assert f"{name}.something_new" in msg and "match no layer" in msg


def test_shape_mismatch_is_named(tmp_path, valid):
    """A LoRA made for a wider layer (in 64, out 64) under the name of a 32-wide attention projection."""
    tensors = dict(valid["tensors"])
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert tuple(tensors[f"{name}.lora_down.weight"].shape) == (4, 32)
    tensors[f"{name}.lora_down.weight"] = torch.randn(4, 64)
    tensors[f"{name}.lora_up.weight"] = torch.randn(64, 4)
    path = tmp_path / "wide.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    msg = _refused(path, valid["models"])
    assert "1 modules do not fit their layer" in msg or "1 module does not fit its layer" in msg
    # whichever of the two tensors is checked first is named, with both shapes
    assert f"{name}: " in msg
    assert ("lora_down.weight has shape (4, 64), expected (4, 32)" in msg
            or "lora_up.weight has shape (64, 4), expected (32, 4)" in msg), msg
    # non-strict: the rest loads, the bad module is reported
    with pytest.warns(UserWarning, match="do not fit|does not fit"):
        net, report = load_adapter(path, valid["models"], "sd1", strict=False)
    assert report.total_matched == valid["modules"] - 1 and len(report.shape_errors) == 1
    assert report.shape_errors[0].startswith(name)
    net.detach()


def test_nothing_matches(tmp_path, valid):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"lora_unet_some_other_model_block.lora_down.weight": torch.zeros(4, 8),
                                 "lora_unet_some_other_model_block.lora_up.weight": torch.zeros(8, 4)}, str(path))
    msg = _refused(path, valid["models"])
    assert "no key of this file matches a layer of the model" in msg


# ---------------------------------------------------------------------------------------- atomic writes
def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


@pytest.mark.parametrize("where", ["serialize", "write", "fsync", "replace"])
@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_crash_mid_save_keeps_previous_file(tmp_path, sd1, monkeypatch, where, exc):
    target = tmp_path / "adapter.safetensors"
    save_adapter(_network(sd1, preset="attn-mlp"), target, "sd1")
    before = target.read_bytes()
    other = _network(sd1, preset="attn", seed=1)

    def boom(*a, **k):
        raise exc

    if where == "serialize":
        monkeypatch.setattr(files, "serialize", boom)
    elif where == "write":  # the temporary file holds new (and stray) bytes when the crash comes
        real = files.atomic_path

        @contextlib.contextmanager
        def half(target_):
            with real(target_) as tmp:
                yield tmp
                with open(tmp, "ab") as f:
                    f.write(b"partial")
                raise exc

        monkeypatch.setattr(files, "atomic_path", half)
    elif where == "fsync":
        monkeypatch.setattr(files.os, "fsync", boom)
    else:
        monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(type(exc)):
        save_adapter(other, target, "sd1")
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    # a crash while writing a new file leaves nothing behind
    fresh = tmp_path / "new.safetensors"
    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(type(exc)):
        save_adapter(other, fresh, "sd1")
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_save_replaces_existing_file(tmp_path, sd1):
    target = tmp_path / "a.safetensors"
    save_adapter(_network(sd1, preset="attn-mlp"), target, "sd1")
    save_adapter(_network(sd1, preset="full"), target, "sd1")
    assert len(AdapterFile.read(target).modules) == len(_network(tiny_components("sd1"), preset="full"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# -------------------------------------------------------------------------------------------- hashes
def _kohya_hashes(tensors: dict, metadata: dict) -> tuple[str, str]:
    """kohya sd-scripts' precalculate_safetensors_hashes, written out here: serialise with only the ss_*
    metadata; model hash = sha256 of the bytes after the header, legacy = sha256 of 0x100000..0x110000[:8]."""
    data = safetensors.torch.save(tensors, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest(), hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_hashes_follow_kohya(tmp_path, sd1):
    path = tmp_path / "big.safetensors"
    meta = save_adapter(_network(sd1, rank=16, alpha=8), path, "sd1",
                        metadata={"ss_network_dim": "16", "ss_output_name": "x", "user_note": "not hashed"})
    data = path.read_bytes()
    assert len(data) > 0x110000 + 4096, "the legacy window must lie inside the file"
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    written = header["__metadata__"]
    assert written == meta
    # model hash: sha256 of the data section of the file as written
    assert written["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()
    tensors = safetensors.torch.load(data)
    model_hash, legacy = _kohya_hashes(tensors, written)
    assert written["sshs_model_hash"] == model_hash
    assert written["sshs_legacy_hash"] == legacy and re.fullmatch(r"[0-9a-f]{8}", legacy)
    # user metadata does not change the hashes; tensor data does
    again = tmp_path / "again.safetensors"
    meta2 = save_adapter(_network(tiny_components("sd1"), rank=16, alpha=8), again, "sd1",
                         metadata={"ss_network_dim": "16", "ss_output_name": "x", "user_note": "changed"})
    assert (meta2["sshs_model_hash"], meta2["sshs_legacy_hash"]) == (meta["sshs_model_hash"], meta["sshs_legacy_hash"])
    assert files.short_hash(path) == meta["sshs_model_hash"][:12]


# ------------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_metadata_per_family(tmp_path, family):
    parts = tiny_components(family)
    path = tmp_path / f"{family}.safetensors"
    meta = save_adapter(_network(parts, preset="attn-mlp"), path, family)
    on_disk = files.read_metadata(path)
    assert on_disk == meta
    assert meta["ss_base_model_version"] == {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family]
    assert meta["ss_v2"] == str(family == "sd2")
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == "lora" and args["preset"] == "attn-mlp"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"].endswith("/lora")
    assert AdapterFile.read(path).detect_family() == family
    if family == "sd2":
        v = build_metadata(_network(parts, preset="attn-mlp"), "sd2", v_prediction=True)
        assert v["ss_base_model_version"] == "sd_v2_v" and v["modelspec.prediction_type"] == "v"


@pytest.mark.parametrize("algo,dora,rank,alpha,module,args", [
    ("lora", False, 4, 2, "networks.lora", {"algo": "locon", "conv_dim": "8", "conv_alpha": "4"}),
    ("lora", True, 4, 2, "lycoris.kohya", {"algo": "lora", "dora_wd": "True", "conv_dim": "8"}),
    ("loha", False, 4, 2, "lycoris.kohya", {"algo": "loha", "conv_dim": "8", "conv_alpha": "4"}),
    # LoKr: rank 2 keeps w2 low-rank on the 32-wide tiny layers (4x8 split), so alpha counts
    ("lokr", False, 2, 1, "lycoris.kohya", {"algo": "lokr", "factor": "-1"}),
])
def test_metadata_network_module_and_args(tmp_path, sd1, algo, dora, rank, alpha, module, args):
    net = _network(sd1, algo=algo, dora=dora, rank=rank, alpha=alpha, conv_rank=8, conv_alpha=4)
    meta = save_adapter(net, tmp_path / "m.safetensors", "sd1")
    assert meta["ss_network_module"] == module
    assert meta["ss_network_dim"] == str(rank) and meta["ss_network_alpha"] == str(alpha)
    parsed = json.loads(meta["ss_network_args"])
    assert isinstance(parsed, dict)
    for k, v in args.items():
        assert parsed[k] == v, (k, parsed)
    assert all(isinstance(v, str) for v in meta.values())


# -------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,tag,torch_dtype,tol", [("fp16", "F16", torch.float16, 2e-3),
                                                       ("bf16", "BF16", torch.bfloat16, 2e-2),
                                                       (None, "F32", torch.float32, 0.0)])
def test_dtype_on_request(tmp_path, valid, dtype, tag, torch_dtype, tol):
    path = tmp_path / "d.safetensors"
    save_adapter(valid["net"], path, "sd1", dtype=dtype)
    header, _ = files.read_header(path)
    tags = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert tags == {tag}
    with safe_open(str(path), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch_dtype for k in f.keys())
    af = AdapterFile.read(path)
    assert af.dtype == str(torch_dtype).replace("torch.", "")
    # the fp16/bf16 file holds the rounded adapter: every ΔW stays within the dtype's rounding
    models = valid["models"]
    net, report = load_adapter(path, models, "sd1", attach=False)
    assert report.ok and report.total_matched == valid["modules"]
    ref = dict(((c, p), m) for c, p, m in valid["net"].items_by_module())
    with torch.no_grad():
        for c, p, m in net.items_by_module():
            assert _rel(m.delta_weight(), ref[(c, p)].delta_weight()) <= tol


def test_unknown_dtype(tmp_path, valid):
    with pytest.raises(AdapterFileError, match="unknown dtype 'fp8'; use fp32, fp16 or bf16"):
        save_adapter(valid["net"], tmp_path / "x.safetensors", "sd1", dtype="fp8")
    assert not (tmp_path / "x.safetensors").exists()


def test_header_length_starting_like_a_pickle_is_still_safetensors(tmp_path, valid):
    """A header length whose low byte is 0x80 (a pickle's first byte) must not be taken for a pickle."""
    path = tmp_path / "x80.safetensors"
    for pad in range(0, 512, 1):
        data = safetensors.torch.save(valid["tensors"], metadata={"pad": "p" * pad})
        if data[0] == 0x80:
            break
    assert data[0] == 0x80
    path.write_bytes(data)
    net, report = load_adapter(path, valid["models"], "sd1")
    assert report.ok and report.total_matched == valid["modules"]
    net.detach()


def test_atomic_write_gives_plain_file_permissions(tmp_path):
    """Files written atomically get the mode a plain open() gives (0666 less the umask), not mkstemp's 0600,
    and an existing file keeps its mode."""
    import os
    import stat

    from sdlora.files import tensors as sdfiles

    mask = os.umask(0o022)
    try:
        target = tmp_path / "a.bin"
        sdfiles.atomic_write_bytes(target, b"x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        os.chmod(target, 0o600)
        sdfiles.atomic_write_bytes(target, b"y")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.read_bytes() == b"y"
    finally:
        os.umask(mask)
