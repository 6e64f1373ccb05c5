"""Adapter stack: fuse/unfuse exactness, one backup per layer, strength changes that touch only their adapter,
bypass == fused, block weights (LBW) and text-encoder strengths, mismatched adapters."""
from __future__ import annotations

import functools

import pytest
import torch

from fake_adapters import make_adapter
from sdlora.inference import blocks
from sdlora import models
from sdlora.inference import stack as stack_mod
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.inference.stack import AdapterStack, parse_adapter_arg
from tiny import full_size_unet, tiny_pipeline

torch.set_num_threads(1)


def _model(family: str = "sd1") -> models.BaseModel:
    return models.from_pipeline(tiny_pipeline(family))


def _snapshot(model: models.BaseModel) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in model.pipeline_components().items()
            for k, v in m.state_dict().items()}


def _assert_same(model: models.BaseModel, snap: dict[str, torch.Tensor]) -> None:
    now = _snapshot(model)
    assert now.keys() == snap.keys()
    bad = [k for k in snap if not torch.equal(now[k], snap[k])]
    assert not bad, bad[:5]


@pytest.fixture
def files(tmp_path):
    """Three adapter files for the tiny SD1 model: LoCon on every layer (incl. conv_in, time embedding,
    conv_out), LoHa, LoKr+DoRA."""
    m = _model()
    out = {}
    for name, algo, preset, dora in [("locon", "lora", "all", False), ("loha", "loha", "attn-mlp", False),
                                     ("lokr", "lokr", "attn", True)]:
        out[name] = tmp_path / f"{name}.safetensors"
        make_adapter(m, out[name], algo=algo, preset=preset, seed=len(out), dora=dora)
    return out


def _unet_out(model: models.BaseModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return model.unet(x, 500, encoder_hidden_states=ctx).sample


def test_fuse_unfuse_restores_weights_bit_for_bit(files):
    model = _model()
    snap = _snapshot(model)
    st = AdapterStack(model)
    st.add(files["locon"], strength=0.8, te_strength=0.5)
    st.add(files["loha"], strength=-0.6, block_weights="OUTD")
    st.add(files["lokr"], strength=1.2)
    _assert_same(model, snap)  # bypass: weights untouched
    st.fuse()
    changed = sum(not torch.equal(v, snap[k]) for k, v in _snapshot(model).items())
    assert changed > 100
    st.set_strength("loha", 0.3)
    st.set_strength("locon", 0.0)
    st.unfuse()
    _assert_same(model, snap)
    st.fuse()
    st.remove("lokr")
    st.clear()
    _assert_same(model, snap)
    assert len(st) == 0


def test_one_backup_per_layer(files):
    model = _model()
    st = AdapterStack(model)
    for name in files:
        st.add(files[name], strength=0.5)
    originals = {id(layer.layer): layer.layer.weight.detach().clone() for layer in st._layers.values()}
    st.fuse()
    layers = {id(m.base) for a in st for m in a.modules()}
    backups = [layer for layer in st._layers.values() if layer.backup is not None]
    assert len(backups) == len(layers)
    shared = sum(len(layer.modules) > 1 for layer in st._layers.values())
    assert shared > 0  # layers with several adapters still have one backup
    # ... all of them views of ONE buffer per dtype (stack._back_up: no per-layer blocks, sdlora/memory.py)
    storages = {t.untyped_storage().data_ptr() for layer in backups for t in layer.backup.values()}
    assert len(storages) == 1
    for layer in backups:  # each view holds its own layer's original weight
        assert torch.equal(layer.backup["weight"], originals[id(layer.layer)])


def test_bypass_equals_fused_within_fp32_tolerance(files):
    model = _model()
    base = _unet_out(model)
    st = AdapterStack(model)
    st.add(files["locon"], strength=0.7)
    st.add(files["loha"], strength=-0.5)
    st.add(files["lokr"], strength=0.9)
    bypass = _unet_out(model)
    st.fuse()
    fused = _unet_out(model)
    assert (bypass - base).abs().max() > 1e-2
    torch.testing.assert_close(fused, bypass, rtol=1e-4, atol=1e-5)
    st.set_strength("loha", 0.25)
    refused = _unet_out(model)
    st.unfuse()
    torch.testing.assert_close(_unet_out(model), refused, rtol=1e-4, atol=1e-5)


def test_strength_change_touches_only_its_adapter(files, monkeypatch):
    model = _model()
    st = AdapterStack(model)
    a = st.add(files["locon"], strength=0.5)
    b = st.add(files["loha"], strength=0.5)
    sentinel = 123.0
    for m in b.modules():
        m.multiplier = sentinel
    st.set_strength("locon", 0.9)
    assert all(m.multiplier == sentinel for m in b.modules())
    assert all(m.multiplier == 0.9 for m in a.modules())
    st.set_strength("loha", 0.5)
    st.fuse()
    calls = []
    real = stack_mod.fold_weight
    monkeypatch.setattr(stack_mod, "fold_weight", lambda w, mods: calls.append(1) or real(w, mods))
    st.set_strength("loha", 0.1)
    assert len(calls) == len({id(m.base) for m in b.modules()}) < len(st._layers)


def test_strength_zero_disables_and_te_strength(files):
    model = _model()
    st = AdapterStack(model)
    a = st.add(files["locon"], strength=0.8, te_strength=0.25)
    te = [m for m, comp, _ in a._factors if comp == "te1"]
    unet = [m for m, comp, _ in a._factors if comp == "unet"]
    assert te and unet
    assert all(m.multiplier == 0.25 for m in te) and all(m.multiplier == 0.8 for m in unet)
    st.set_strength(a.name, 0.0, te_strength=None)
    assert not any(m.enabled for m in a.modules()) and st.active() == []


def _hooked(st: AdapterStack) -> int:
    """How many of the stack's layers carry a forward hook."""
    return sum(bool(layer.layer._forward_hooks) for layer in st._layers.values())


def test_hooks_only_where_an_adapter_is_live(files):
    """Layers whose adapters are all at strength 0, and every layer while fused, carry no hook at all (the
    base layer's own forward, nothing per call); strength changes, remove and unfuse put hooks back exactly
    where an active adapter sits, and the outputs follow."""
    model = _model()
    base = _unet_out(model)
    st = AdapterStack(model)
    st.add(files["locon"], strength=0.7)
    n = len(st._layers)
    assert _hooked(st) == n
    on = _unet_out(model)
    st.set_strength("locon", 0.0, te_strength=None)
    assert _hooked(st) == 0
    torch.testing.assert_close(_unet_out(model), base, rtol=0, atol=0)
    st.add(files["loha"], strength=0.5)
    loha_layers = {id(m.base) for m in st["loha"].modules()}
    assert _hooked(st) == len(loha_layers) < n
    st.fuse()
    assert _hooked(st) == 0
    fused = _unet_out(model)
    st.set_strength("locon", 0.7, te_strength=None)  # refolds; still no hooks
    assert _hooked(st) == 0
    st.unfuse()
    assert _hooked(st) == n
    st.remove("loha")
    assert _hooked(st) == n
    torch.testing.assert_close(_unet_out(model), on, rtol=0, atol=0)
    st.set_strength("locon", 0.0, te_strength=None)
    st.add(files["loha"], strength=0.5)
    torch.testing.assert_close(_unet_out(model), fused, rtol=1e-4, atol=1e-5)
    st.clear()
    assert st._layers == {}
    assert not any(m._forward_hooks for m in model.unet.modules())
    torch.testing.assert_close(_unet_out(model), base, rtol=0, atol=0)


def test_block_weights_scale_each_module_by_its_block(files):
    model = _model()
    st = AdapterStack(model)
    vector = [0.5] + [float(i) / 10 for i in range(1, 26)]  # 26 values: BASE, IN00..IN11, M00, OUT00..OUT11
    a = st.add(files["locon"], strength=2.0, te_strength=1.0, block_weights=vector)
    weights = dict(zip(blocks.IDS_26, vector))
    for component, path, module in a.network.items_by_module():
        block = blocks.block_of(component, path, model.unet.config)
        base = 1.0 if component != "unet" else 2.0
        assert module.multiplier == pytest.approx(base * weights[block])
    assert {blocks.block_of(c, p, model.unet.config) for c, p, _ in a.network.items_by_module()} >= {
        "BASE", "IN00", "IN01", "IN03", "M00", "OUT05"}


@pytest.mark.parametrize("family,path,block", [
    ("sd1", "conv_in", "IN00"), ("sd1", "time_embedding.linear_1", "BASE"),
    ("sd1", "down_blocks.0.attentions.0.proj_in", "IN01"), ("sd1", "down_blocks.0.downsamplers.0.conv", "IN03"),
    ("sd1", "down_blocks.3.resnets.1.conv2", "IN11"), ("sd1", "mid_block.attentions.0.proj_out", "M00"),
    ("sd1", "mid_block.resnets.1.conv1", "M00"), ("sd1", "up_blocks.0.resnets.0.conv1", "OUT00"),
    ("sd1", "up_blocks.0.upsamplers.0.conv", "OUT02"), ("sd1", "up_blocks.1.attentions.0.proj_in", "OUT03"),
    ("sd1", "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k", "OUT11"), ("sd1", "conv_out", "OUT11"),
    ("sdxl", "down_blocks.1.attentions.0.proj_in", "IN04"), ("sdxl", "down_blocks.2.attentions.1.proj_out", "IN08"),
    ("sdxl", "add_embedding.linear_2", "BASE"), ("sdxl", "up_blocks.0.attentions.0.proj_in", "OUT00"),
    ("sdxl", "up_blocks.2.resnets.2.conv2", "OUT08"), ("sdxl", "conv_out", "OUT08"),
])
def test_block_of_full_size_models(family, path, block):
    assert blocks.block_of("unet", path, _full_config(family)) == block


@functools.lru_cache(maxsize=None)
def _full_config(family: str):
    return full_size_unet(family).config


def test_block_weight_vectors_and_presets():
    w17 = blocks.parse_block_weights("1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0", "sd1")  # IND
    assert w17 == blocks.parse_block_weights("IND", "sd1")
    assert w17["IN05"] == 1 and w17["IN08"] == 1 and w17["IN04"] == 0 and w17["M00"] == 0
    assert w17["IN00"] == 0 and w17["IN03"] == 0 and w17["OUT00"] == 0  # blocks a 17-vector does not list -> 0
    xl = blocks.parse_block_weights([1, 0.5, 0.5, 0.5, 0.5, 0, 1, 1, 1, 1, 1, 1], "sdxl")
    assert xl["IN04"] == 0.5 and xl["M00"] == 0 and xl["OUT05"] == 1 and xl["IN00"] == 0 and xl["OUT08"] == 0
    assert blocks.parse_block_weights("ALL", "sdxl")["OUT08"] == 1
    with pytest.raises(ConfigError, match="take 17 or 26 values"):
        blocks.parse_block_weights([1] * 12, "sd1")
    with pytest.raises(ConfigError, match="take 12 or 20 values"):
        blocks.parse_block_weights([1] * 17, "sdxl")
    with pytest.raises(ConfigError, match="preset"):
        blocks.parse_block_weights("OUTD", "sdxl")


def test_mismatched_adapter_is_refused_and_model_unchanged(tmp_path):
    xl = _model("sdxl")
    make_adapter(xl, tmp_path / "xl.safetensors")
    model = _model("sd1")
    snap = _snapshot(model)
    before = _unet_out(model)
    st = AdapterStack(model)
    with pytest.raises(AdapterFileError, match="SDXL adapter"):
        st.add(tmp_path / "xl.safetensors")
    assert len(st) == 0
    _assert_same(model, snap)
    assert torch.equal(_unet_out(model), before)
    with pytest.raises(AdapterFileError, match="no adapter named"):
        st.set_strength("xl", 1.0)


def test_duplicate_names_and_second_stack(files):
    model = _model()
    st = AdapterStack(model)
    st.add(files["loha"])
    with pytest.raises(AdapterFileError, match="already in the stack"):
        st.add(files["loha"])
    st.add(files["loha"], name="loha2", strength=0.1)
    with pytest.raises(AdapterFileError, match="already has an adapter stack"):
        AdapterStack(model)


def test_parse_adapter_arg():
    s = parse_adapter_arg("dir/style.safetensors:0.8:0.4")
    assert (str(s.path), s.strength, s.te_strength, s.block_weights) == ("dir/style.safetensors", 0.8, 0.4, None)
    s = parse_adapter_arg("C:/x/a.safetensors:lbw=OUTD")
    assert (str(s.path), s.strength, s.block_weights) == ("C:/x/a.safetensors", 1.0, "OUTD")
    s = parse_adapter_arg("a.safetensors:-0.5:lbw=1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0")
    assert s.strength == -0.5 and s.te_strength is None and s.block_weights.count(",") == 16
    with pytest.raises(ConfigError):
        parse_adapter_arg("a.safetensors:foo=1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fold_weight_leaves_its_inputs_alone(dtype):
    """fold_weight sums in place into a float32 copy of its own and scales fresh ΔW in place: the weight it is
    given and the adapters' parameters never change, and the result is W + Σ m·γ·ΔW computed as before."""
    from sdlora.networks import FullModule, LoHaModule, LoRAModule

    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    mods = [LoRAModule(layer, 4, 2), LoHaModule(layer, 4, 8), FullModule(layer)]
    with torch.no_grad():
        for m, mult in zip(mods, (0.7, -1.5, 1.0)):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape) * 0.3)
            m.multiplier = mult
    params = [p.detach().clone() for m in mods for p in m.parameters()]
    weight = layer.weight.detach().to(dtype)
    before = weight.clone()
    with torch.no_grad():
        got = stack_mod.fold_weight(weight, mods)
        expected = weight.float().clone()
        for m in mods:
            expected += m.multiplier * (m.delta() * m.scale)
    assert torch.equal(weight, before)
    assert all(torch.equal(p, q) for p, q in zip(params, [p for m in mods for p in m.parameters()]))
    assert got.dtype == dtype and torch.equal(got, expected.to(dtype))
