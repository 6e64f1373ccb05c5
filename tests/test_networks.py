"""Acceptance tests of the adapter algorithms (networks/) and the Network.

1. Cross-implementation oracle: every algorithm (LoRA/LoCon, LoHa, LoKr, with and without DoRA) against the
   `lycoris-lora` package's own modules, built on the same base layer with the same parameters.
2. LoRA's bypass path never builds ΔW.
3. Initialisation (ΔW = 0) and the parameter shapes of FORMATS.md.
4. Training regularisers (dropout, rank_dropout, module_dropout).
5. Gradients reach adapter parameters only (tiny UNet + CLIP text encoder).
6. Presets and module counts (full-size SD1.5 / SDXL on the meta device), and Network.create options.

Facts about lycoris-lora (4.x) these tests rely on, and document:
- Its modules are called directly (``module(x)``); ``forward`` runs ``org_forward`` (the base layer's bound
  forward captured at construction) and adds the adapter: in ``bypass_mode=True`` through the factored
  path, otherwise by rebuilding ΔW ("default"/rebuild mode). ``apply_to()`` only swaps the base module's
  ``forward`` for the adapter's.
- ``LohaModule.get_weight`` / ``LokrModule.get_weight`` already include γ; ``get_diff_weight`` multiplies
  by γ again, so its merge path (``merge_to``, ``get_merged_weight``) applies γ² when alpha ≠ rank. The
  forward passes apply γ once. ``LoConModule.get_diff_weight`` applies γ once.
- Its bypass mode ignores DoRA (``weight_decompose``): only its rebuild mode applies the decomposition.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn

from sdlora.networks import (
    FullModule,
    LoHaModule,
    LoKrModule,
    LoRAModule,
    Network,
    NetworkConfig,
    factorization,
    preset_modules,
)

lycoris_locon = pytest.importorskip("lycoris.modules.locon")
from lycoris.functional.general import factorization as lycoris_factorization  # noqa: E402
from lycoris.modules.loha import LohaModule as LyLoha  # noqa: E402
from lycoris.modules.lokr import LokrModule as LyLokr  # noqa: E402

LyLoCon = lycoris_locon.LoConModule

OURS = {"lora": LoRAModule, "loha": LoHaModule, "lokr": LoKrModule}
THEIRS = {"lora": LyLoCon, "loha": LyLoha, "lokr": LyLokr}
# the parameters that start at zero, so that ΔW = 0 at creation
ZERO_INIT = {"lora": ("lora_up.weight",), "loha": ("hada_w2_a",), "lokr": ("lokr_w2", "lokr_w2_b")}


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is faster, and far faster on a busy machine, where idle
    OpenMP workers spin (the whole file takes ~15 s instead of minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_layer(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(64, 96)
    if kind == "conv1":
        return nn.Conv2d(32, 48, 1)
    if kind == "conv3":
        return nn.Conv2d(32, 48, 3, stride=2, padding=1)
    if kind == "conv3d":  # dilated, no bias
        return nn.Conv2d(32, 48, 3, padding=2, dilation=2, bias=False)
    raise ValueError(kind)


def make_input(kind: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        return torch.randn(3, 5, 64, generator=g)  # batch × tokens × features: channels last
    return torch.randn(2, 32, 9, 9, generator=g)


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 2, std: float = 0.3) -> None:
    """Random non-zero adapter parameters; a trained-looking DoRA magnitude (row norms ± 20 %)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(module.named_parameters())
    dora_scale = params.pop("dora_scale", None)
    for p in params.values():  # the same values with or without DoRA
        p.copy_(torch.randn(p.shape, generator=g) * std)
    if dora_scale is not None:
        dora_scale.mul_(1 + 0.2 * torch.randn(dora_scale.shape, generator=g))


def tol(ref: torch.Tensor) -> float:
    return 1e-5 * max(1.0, ref.abs().max().item())


def assert_close(a: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert a.shape == ref.shape, f"{what}: shape {tuple(a.shape)} != {tuple(ref.shape)}"
    diff = (a - ref).abs().max().item()
    assert diff <= tol(ref), f"{what}: max abs diff {diff:.3g} > {tol(ref):.3g}"


def container(*layers: nn.Module) -> nn.ModuleDict:
    return nn.ModuleDict({f"l{i}": layer for i, layer in enumerate(layers)})


# ------------------------------------------------------------------------------ 1. oracle vs lycoris
@dataclass
class Case:
    id: str
    algo: str
    layer: str
    rank: int
    alpha: float | None
    ours: dict = field(default_factory=dict)
    theirs: dict = field(default_factory=dict)


def _lokr(id, layer, rank, alpha, factor=-1, decompose_both=False, tucker=False, full_matrix=False):
    return Case(id, "lokr", layer, rank, alpha,
                dict(factor=factor, decompose_both=decompose_both, tucker=tucker, full_matrix=full_matrix),
                dict(factor=factor, decompose_both=decompose_both, use_tucker=tucker, full_matrix=full_matrix))


CASES = [
    Case("lora-linear", "lora", "linear", 4, 2),
    Case("lora-linear-rs", "lora", "linear", 4, 3, dict(rs_lora=True), dict(rs_lora=True)),
    Case("locon-conv1x1", "lora", "conv1", 4, 2),
    Case("locon-conv3x3", "lora", "conv3", 4, 2),
    Case("locon-conv3x3-tucker", "lora", "conv3", 4, 2, dict(tucker=True), dict(use_tucker=True)),
    Case("loha-linear", "loha", "linear", 4, 2),
    Case("loha-linear-rs", "loha", "linear", 4, 3, dict(rs_lora=True), dict(rs_lora=True)),
    Case("loha-conv1x1", "loha", "conv1", 4, 2),
    Case("loha-conv3x3", "loha", "conv3", 4, 2),
    Case("loha-conv3x3-tucker", "loha", "conv3", 4, 2, dict(tucker=True), dict(use_tucker=True)),
    # Linear(64, 96): 64 -> (8, 8) | f4 (4, 16) | f8 (8, 8); 96 -> (8, 12) | f4 (4, 24) | f8 (8, 12)
    _lokr("lokr-linear-w2lowrank", "linear", 2, 1),
    _lokr("lokr-linear-both", "linear", 2, 1, decompose_both=True),
    _lokr("lokr-linear-f4", "linear", 2, 1, factor=4),
    _lokr("lokr-linear-f4-both", "linear", 2, 1, factor=4, decompose_both=True),
    _lokr("lokr-linear-f8-fullw2", "linear", 16, 4, factor=8),  # r >= max/2: full w2, alpha ignored
    _lokr("lokr-linear-full-matrix", "linear", 2, 1, full_matrix=True),
    # Conv(32, 48): 32 -> (4, 8) | f4 (4, 8) | f8 (4, 8); 48 -> (6, 8) | f4 (4, 12) | f8 (6, 8)
    _lokr("lokr-conv3x3", "conv3", 2, 1),
    _lokr("lokr-conv3x3-both", "conv3", 2, 1, decompose_both=True),
    _lokr("lokr-conv3x3-f4", "conv3", 2, 1, factor=4),
    _lokr("lokr-conv3x3-f8-fullw2", "conv3", 8, 2, factor=8),
    _lokr("lokr-conv3x3-tucker", "conv3", 2, 1, tucker=True),
    _lokr("lokr-conv3x3-tucker-both", "conv3", 2, 1, decompose_both=True, tucker=True),
    _lokr("lokr-conv1x1", "conv1", 2, 1),
    _lokr("lokr-conv1x1-fullw2", "conv1", 4, 2, factor=4),
]


def build_pair(case: Case, dora: bool, multiplier: float = 1.0, bypass: bool | None = False):
    """(base layer, our adapter, their adapter) with identical random parameters."""
    base = make_layer(case.layer)
    ours = OURS[case.algo](base, case.rank, case.alpha, dora=dora, **case.ours)
    randomize(ours)
    ours.multiplier = multiplier
    theirs = THEIRS[case.algo]("t", base, multiplier, case.rank, case.alpha, weight_decompose=dora,
                               wd_on_out=True, bypass_mode=bypass, **case.theirs)
    # Our parameter names are the file suffixes, so our state dict loads into theirs with no leftovers.
    assert set(theirs.state_dict()) == set(ours.state_dict())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    ours.eval()
    return base, ours, theirs


def their_delta_weight(theirs) -> torch.Tensor:
    """γ·ΔW from lycoris, γ applied once (as in its forward)."""
    if isinstance(theirs, LyLoCon):
        return theirs.make_weight() * theirs.scale
    return theirs.get_weight(theirs.shape)  # LoHa / LoKr: get_weight includes γ


@pytest.mark.parametrize("multiplier", [1.0, 0.5], ids=["m1", "m0.5"])
@pytest.mark.parametrize("dora", [False, True], ids=["plain", "dora"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@torch.no_grad()
def test_matches_lycoris(case: Case, dora: bool, multiplier: float):
    base, ours, theirs = build_pair(case, dora, multiplier)
    x = make_input(case.layer)
    w0, b0 = base.weight.clone(), None if base.bias is None else base.bias.clone()

    # stored alpha (alpha·sqrt(r) for rs-LoRA; r for a LoKr without any low-rank half) and γ
    assert float(ours.alpha) == pytest.approx(float(theirs.alpha))
    assert ours.scale == pytest.approx(float(theirs.scale))

    # γ·ΔW
    dw = ours.delta_weight()
    assert dw.shape == base.weight.shape
    assert_close(dw, their_delta_weight(theirs), "delta_weight")

    ref = theirs(x)  # their rebuild ("default") forward
    plain = base(x)
    assert (ref - plain).abs().max() > 100 * tol(ref), "the adapter must change the output measurably"
    if not dora:  # lycoris's bypass mode ignores DoRA (see test_lycoris_bypass_ignores_dora)
        theirs.bypass_mode = True
        assert_close(theirs(x), ref, "lycoris bypass vs lycoris rebuild")

    ours.attach()
    bypass = base(x)
    assert_close(bypass, ref, "our bypass vs lycoris")
    ours.merge()
    assert ours.merged and not torch.equal(base.weight, w0)
    merged = base(x)
    assert_close(merged, ref, "our merged vs lycoris")
    assert_close(merged, bypass, "our merged vs our bypass")
    # the merged weight is W' of FORMATS.md
    if dora:
        w = w0 + dw
        norm = w.flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1))
        expected = w * (multiplier * (ours.dora_scale / norm - 1) + 1)
    else:
        expected = w0 + multiplier * dw
    assert_close(base.weight, expected, "merged weight")
    ours.unmerge()
    assert torch.equal(base.weight, w0)
    assert b0 is None or torch.equal(base.bias, b0)
    ours.detach()
    assert torch.equal(base(x), plain)

    # and back: their state dict read by our from_tensors (rank, Tucker form, LoKr layout from the shapes)
    back = OURS[case.algo].from_tensors(make_layer(case.layer), dict(theirs.state_dict()))
    assert _shapes(back) == _shapes(ours)
    assert back.scale == pytest.approx(ours.scale)
    assert torch.equal(back.delta_weight(), dw)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
@torch.no_grad()
def test_lycoris_merge_path_applies_gamma_twice(algo):
    """FORMATS.md pitfall: lycoris's get_diff_weight / merge_to scale LoHa and LoKr by γ² when alpha ≠ rank,
    its forward by γ. We follow the forward (and ComfyUI / A1111)."""
    case = next(c for c in CASES if c.id == {"loha": "loha-linear", "lokr": "lokr-linear-w2lowrank"}[algo])
    base, ours, theirs = build_pair(case, dora=False)
    gamma = ours.scale
    assert gamma != 1.0
    dw = ours.delta_weight()  # γ·ΔW
    diff = theirs.get_diff_weight()[0]
    assert_close(diff.reshape(dw.shape), gamma * dw, "lycoris get_diff_weight = γ²·ΔW")
    assert (diff.reshape(dw.shape) - dw).abs().max() > 100 * tol(dw)
    # ... and so does its merge into the base weight
    w0 = base.weight.clone()
    theirs.merge_to(1.0)
    assert_close(base.weight, w0 + gamma * dw, "lycoris merge_to = W + γ²·ΔW")


@torch.no_grad()
def test_lycoris_locon_diff_weight_applies_gamma_once():
    base, ours, theirs = build_pair(CASES[0], dora=False)
    assert ours.scale == 0.5
    assert_close(theirs.get_diff_weight()[0], ours.delta_weight(), "LoCon get_diff_weight")


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
@torch.no_grad()
def test_lycoris_bypass_ignores_dora(algo):
    """Why DoRA is compared with lycoris's rebuild mode only: its bypass mode drops the decomposition."""
    case = next(c for c in CASES if c.algo == algo and c.layer == "linear")
    x = make_input("linear")
    _, _, dora_bypass = build_pair(case, dora=True, bypass=True)
    _, _, plain_bypass = build_pair(case, dora=False, bypass=True)
    _, _, dora_rebuild = build_pair(case, dora=True, bypass=False)
    assert torch.allclose(dora_bypass(x), plain_bypass(x), atol=1e-6)
    assert not torch.allclose(dora_bypass(x), dora_rebuild(x), atol=1e-3)


def test_factorization_matches_lycoris():
    for dim in list(range(1, 400)) + [640, 768, 1280, 2048, 3072, 5120]:
        for factor in (-1, 1, 2, 4, 8, 16, 32):
            assert factorization(dim, factor) == lycoris_factorization(dim, factor), (dim, factor)


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
@torch.no_grad()
def test_dilated_conv_bypass_equals_merged(algo):
    """Dilation is carried by the adapter (lycoris's LoCon bypass drops it, so no oracle here)."""
    base = make_layer("conv3d")
    kw = {"factor": 4} if algo == "lokr" else {}
    mod = OURS[algo](base, 2, 1, **kw)
    randomize(mod)
    x = make_input("conv3d")
    plain = base(x)
    mod.attach()
    bypass = base(x)
    mod.merge()
    merged = base(x)
    mod.detach()
    assert bypass.shape == plain.shape
    assert (bypass - plain).abs().max() > 100 * tol(plain)
    assert_close(bypass, merged, "dilated bypass vs merged")
    expected = torch.nn.functional.conv2d(x, base.weight + mod.delta_weight(), None, padding=2, dilation=2)
    assert_close(bypass, expected, "dilated conv with W + γΔW")


@torch.no_grad()
def test_network_merge_set_multiplier_unmerge_exact():
    """Merged adapters re-merge on Network.set_multiplier; unmerge restores the weights bit for bit, also with
    two adapters stacked on one layer and with bias deltas."""
    lin, conv = make_layer("linear"), make_layer("conv3")
    models = {"unet": container(lin, conv)}
    loha_case = next(c for c in CASES if c.id == "loha-linear")
    mods = {
        ("unet", "l0"): LoRAModule(lin, 4, 2, dora=True, train_bias=True),
        ("unet", "l1"): LoKrModule(conv, 2, 1, factor=4, tucker=True),
    }
    for i, m in enumerate(mods.values()):
        randomize(m, seed=10 + i)
    net = Network(models, mods)
    # a second adapter on the same Linear (stacking): a LoHa, as its own network
    extra = LoHaModule(lin, loha_case.rank, loha_case.alpha)
    randomize(extra, seed=20)
    net2 = Network(models, {("unet", "l0"): extra})
    xl, xc = make_input("linear"), make_input("conv3")
    w_lin, b_lin, w_conv, b_conv = lin.weight.clone(), lin.bias.clone(), conv.weight.clone(), conv.bias.clone()

    net.attach()
    net.set_multiplier(0.5)
    by_l, by_c = lin(xl), conv(xc)
    net.set_multiplier(1.0)
    net.merge()
    assert all(m.merged for m in net.values())
    net.set_multiplier(0.5)  # while merged
    assert all(m.merged and m.multiplier == 0.5 for m in net.values())
    assert_close(lin(xl), by_l, "re-merged at 0.5 (linear, DoRA + bias)")
    assert_close(conv(xc), by_c, "re-merged at 0.5 (conv)")
    # lycoris at multiplier 0.5 agrees (DoRA: compared with its rebuild mode)
    ly = LyLoCon("t", make_layer("linear"), 0.5, 4, 2, weight_decompose=True)
    sd = {k: v for k, v in mods[("unet", "l0")].state_dict().items() if k != "diff_b"}
    ly.load_state_dict(sd)
    ref = ly(xl) + 0.5 * mods[("unet", "l0")].diff_b
    assert_close(lin(xl), ref, "DoRA at multiplier 0.5 vs lycoris")

    net2.attach()
    net2.merge()  # stacked on the already-merged weight
    net2.set_multiplier(0.25)
    net.set_multiplier(0.75)  # un- and re-merges under net2's merge
    net2.unmerge()
    net.unmerge()
    assert torch.equal(lin.weight, w_lin) and torch.equal(lin.bias, b_lin)
    assert torch.equal(conv.weight, w_conv) and torch.equal(conv.bias, b_conv)
    net.detach()
    net2.detach()
    assert torch.equal(lin(xl), torch.nn.functional.linear(xl, w_lin, b_lin))


# -------------------------------------------------------------------- 2. LoRA bypass never builds ΔW
@pytest.mark.parametrize("kind,tucker", [("linear", False), ("conv1", False), ("conv3", False), ("conv3", True)])
def test_lora_bypass_never_materialises_delta(monkeypatch, kind, tucker):
    base = make_layer(kind)
    mod = LoRAModule(base, 4, 2, tucker=tucker, dropout=0.1, rank_dropout=0.25).eval()
    randomize(mod)
    x = make_input(kind)
    with torch.no_grad():
        plain = base(x)
        expected = torch.nn.functional.linear(x, base.weight + mod.delta_weight(), base.bias) if kind == "linear" \
            else torch.nn.functional.conv2d(x, base.weight + mod.delta_weight(), base.bias, stride=base.stride,
                                            padding=base.padding)

    def boom(self):
        raise RuntimeError("ΔW was materialised")

    monkeypatch.setattr(LoRAModule, "delta", boom)
    mod.attach()
    with torch.no_grad():
        out = base(x)
    assert_close(out, expected, "factored bypass")
    mod.train()
    torch.manual_seed(0)
    out = base(x)  # with dropout and rank dropout
    out.pow(2).mean().backward()
    assert mod.lora_up.weight.grad is not None and mod.lora_up.weight.grad.abs().sum() > 0
    assert not torch.equal(out.detach(), plain)
    with pytest.raises(RuntimeError, match="materialised"):
        mod.merge()  # the patch is effective: merging does need ΔW


@pytest.mark.parametrize("kind", ["linear", "conv1", "conv3"])
def test_lora_lean_bypass(kind):
    """The lean path (γ·m in one multiply, no no-op casts) equals W + m·γΔW in eval mode and in training mode
    without regularisers, passes gradients, and follows a change of dtype (the cached parameter dtype is
    cleared by .to())."""
    base = make_layer(kind)
    mod = LoRAModule(base, 4, 2)
    randomize(mod)
    mod.multiplier = 0.7
    x = make_input(kind)
    with torch.no_grad():
        w = base.weight + 0.7 * mod.delta_weight()
        expected = torch.nn.functional.linear(x, w, base.bias) if kind == "linear" else \
            torch.nn.functional.conv2d(x, w, base.bias, stride=base.stride, padding=base.padding)
    mod.attach()
    for training in (False, True):
        mod.train(training)
        out = base(x)
        assert_close(out.detach(), expected, f"lean bypass (training={training})")
    out.pow(2).mean().backward()
    assert mod.lora_down.weight.grad.abs().sum() > 0 and mod.lora_up.weight.grad.abs().sum() > 0
    assert base.weight.grad is not None  # base not frozen here: the base path is untouched
    mod.eval()
    with torch.no_grad():
        assert mod._param_dtype() == torch.float32
        mod.to(torch.float64)  # adapter in float64, layer and input in float32
        assert mod._param_dtype() == torch.float64
        out = base(x)
        assert out.dtype == torch.float32
        assert_close(out, expected, "lean bypass, float64 adapter")
        mod.to(torch.float32)
        base.to(torch.float64)  # layer and input in float64, adapter in float32
        out = base(x.double())
        assert out.dtype == torch.float64
        assert_close(out.float(), expected, "lean bypass, float64 layer")


# ------------------------------------------------------------------------------ 3. initialisation
INIT_CASES = [
    ("lora", "linear", {}), ("lora", "conv1", {}), ("lora", "conv3", {}), ("lora", "conv3", {"tucker": True}),
    ("loha", "linear", {}), ("loha", "conv3", {}), ("loha", "conv3", {"tucker": True}),
    ("lokr", "linear", {}), ("lokr", "linear", {"decompose_both": True}), ("lokr", "linear", {"factor": 4}),
    ("lokr", "linear", {"full_matrix": True}), ("lokr", "conv3", {}), ("lokr", "conv3", {"tucker": True}),
    ("lokr", "conv3", {"factor": 8}), ("lokr", "conv1", {}),
]


@pytest.mark.parametrize("dora", [False, True], ids=["plain", "dora"])
@pytest.mark.parametrize("algo,kind,kw", INIT_CASES, ids=[f"{a}-{k}-{'-'.join(kw) or 'default'}" for a, k, kw in INIT_CASES])
@torch.no_grad()
def test_fresh_adapter_is_identity(algo, kind, kw, dora):
    base = make_layer(kind)
    torch.manual_seed(3)
    mod = OURS[algo](base, 2, 1, dora=dora, **kw)
    dw = mod.delta_weight()
    assert dw.shape == base.weight.shape and torch.count_nonzero(dw) == 0
    zero = [n for n, _ in mod.named_parameters() if n in ZERO_INIT[algo]]
    assert len(zero) == 1
    for name, p in mod.named_parameters():
        if name in ZERO_INIT[algo]:
            assert torch.count_nonzero(p) == 0, name
        elif name != "dora_scale":
            assert torch.count_nonzero(p) == p.numel(), f"{name} must start random"
    x = make_input(kind)
    w0 = base.weight.clone()
    plain = base(x)
    mod.attach()
    if dora:  # the DoRA factor is dora_scale/‖W‖ = 1 up to rounding
        assert torch.allclose(mod.dora_scale, mod.base.weight.flatten(1).norm(dim=1).view_as(mod.dora_scale))
        assert_close(base(x), plain, "fresh DoRA adapter")
    else:
        assert torch.equal(base(x), plain)
        mod.merge()
        assert torch.equal(base.weight, w0)
    mod.detach()


def test_fresh_network_leaves_outputs_unchanged(tiny):
    unet, te = tiny["unet"], tiny["text_encoder"]
    ids, latents, t = tiny_inputs(tiny)
    with torch.no_grad():
        ref = run_tiny(unet, te, ids, latents, t)
    for algo in ("lora", "loha", "lokr"):
        net = Network.create({"unet": unet, "te1": te}, NetworkConfig(algo=algo, rank=4, preset="all", tucker=True))
        assert len(net) > 0
        net.attach()
        with torch.no_grad():
            assert torch.equal(run_tiny(unet, te, ids, latents, t), ref), algo
        net.detach()


def test_factorization_examples():
    assert factorization(320) == (16, 20)
    assert factorization(640) == (20, 32)
    assert factorization(768) == (24, 32)
    assert factorization(1280) == (32, 40)
    assert factorization(3072) == (48, 64)
    assert factorization(320, 8) == (8, 40)
    assert factorization(127) == (1, 127)
    assert factorization(128, 4) == (4, 32)
    assert factorization(360, 8) == (8, 45)


def _shapes(mod: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in mod.named_parameters()}


@torch.no_grad()
def test_parameter_shapes():
    torch.manual_seed(0)
    lin = nn.Linear(320, 640)
    conv = nn.Conv2d(320, 640, 3, stride=2, padding=1)
    conv1 = nn.Conv2d(320, 640, 1)
    # LoRA / LoCon
    assert _shapes(LoRAModule(lin, 8)) == {"lora_down.weight": (8, 320), "lora_up.weight": (640, 8)}
    m = LoRAModule(conv, 8)
    assert _shapes(m) == {"lora_down.weight": (8, 320, 3, 3), "lora_up.weight": (640, 8, 1, 1)}
    assert (m.lora_down.stride, m.lora_down.padding) == ((2, 2), (1, 1))
    m = LoRAModule(conv, 8, tucker=True)
    assert _shapes(m) == {"lora_down.weight": (8, 320, 1, 1), "lora_mid.weight": (8, 8, 3, 3),
                          "lora_up.weight": (640, 8, 1, 1)}
    assert (m.lora_mid.stride, m.lora_mid.padding) == ((2, 2), (1, 1))
    assert _shapes(LoRAModule(conv1, 8, tucker=True)) == {"lora_down.weight": (8, 320, 1, 1),
                                                          "lora_up.weight": (640, 8, 1, 1)}
    # LoHa
    assert _shapes(LoHaModule(lin, 8)) == {"hada_w1_a": (640, 8), "hada_w1_b": (8, 320),
                                           "hada_w2_a": (640, 8), "hada_w2_b": (8, 320)}
    assert _shapes(LoHaModule(conv, 8)) == {"hada_w1_a": (640, 8), "hada_w1_b": (8, 2880),
                                            "hada_w2_a": (640, 8), "hada_w2_b": (8, 2880)}
    m = LoHaModule(conv, 8, tucker=True)
    assert _shapes(m) == {"hada_t1": (8, 8, 3, 3), "hada_t2": (8, 8, 3, 3), "hada_w1_a": (8, 640),
                          "hada_w1_b": (8, 320), "hada_w2_a": (8, 640), "hada_w2_b": (8, 320)}
    assert 0.9 < m.hada_w1_b.std() < 1.1 and 0.09 < m.hada_w1_a.std() < 0.11 and 0.08 < m.hada_t1.std() < 0.12
    # LoKr: 320 -> (16, 20), 640 -> (20, 32)
    m = LoKrModule(lin, 4, 2)
    assert _shapes(m) == {"lokr_w1": (20, 16), "lokr_w2_a": (32, 4), "lokr_w2_b": (4, 20)}
    assert m.scale == 0.5
    assert _shapes(LoKrModule(lin, 4, decompose_both=True)) == {
        "lokr_w1_a": (20, 4), "lokr_w1_b": (4, 16), "lokr_w2_a": (32, 4), "lokr_w2_b": (4, 20)}
    m = LoKrModule(lin, 16, 2)  # 16 >= max(32, 20)/2: w2 in full, γ = 1
    assert _shapes(m) == {"lokr_w1": (20, 16), "lokr_w2": (32, 20)}
    assert m.scale == 1.0 and float(m.alpha) == 16
    assert _shapes(LoKrModule(lin, 4, 2, full_matrix=True)) == {"lokr_w1": (20, 16), "lokr_w2": (32, 20)}
    assert _shapes(LoKrModule(lin, 4, factor=8)) == {"lokr_w1": (8, 8), "lokr_w2_a": (80, 4), "lokr_w2_b": (4, 40)}
    assert _shapes(LoKrModule(conv, 4)) == {"lokr_w1": (20, 16), "lokr_w2_a": (32, 4), "lokr_w2_b": (4, 180)}
    assert _shapes(LoKrModule(conv, 4, tucker=True)) == {
        "lokr_w1": (20, 16), "lokr_t2": (4, 4, 3, 3), "lokr_w2_a": (4, 32), "lokr_w2_b": (4, 20)}
    assert _shapes(LoKrModule(conv, 16)) == {"lokr_w1": (20, 16), "lokr_w2": (32, 20, 3, 3)}
    # DoRA magnitude: row norms of W, (out, 1[, 1, 1])
    m = LoRAModule(conv, 4, dora=True)
    assert m.dora_scale.shape == (640, 1, 1, 1)
    assert torch.allclose(m.dora_scale.flatten(), conv.weight.flatten(1).norm(dim=1))
    assert LoHaModule(lin, 4, dora=True).dora_scale.shape == (640, 1)
    # alpha: None/0 -> rank; rs-LoRA stores alpha·sqrt(r)
    assert float(LoRAModule(lin, 8).alpha) == 8 and float(LoRAModule(lin, 8, 0).alpha) == 8
    m = LoRAModule(lin, 16, 4, rs_lora=True)
    assert float(m.alpha) == pytest.approx(16.0) and m.scale == pytest.approx(1.0)  # 4/sqrt(16)
    # bias delta only where the base layer has a bias
    assert LoRAModule(lin, 4, train_bias=True).diff_b.shape == (640,)
    assert LoRAModule(nn.Linear(8, 8, bias=False), 4, train_bias=True).diff_b is None


@torch.no_grad()
def test_lokr_without_low_rank_half_ignores_alpha():
    """Neither half decomposed: γ = 1 whatever alpha says, at creation and when read from tensors."""
    lin = nn.Linear(64, 96)
    m = LoKrModule(lin, 2, 1, full_matrix=True)
    assert (m.scale, float(m.alpha)) == (1.0, 2.0)
    randomize(m)
    tensors = {k: v.clone() for k, v in m.state_dict().items()}
    tensors["alpha"] = torch.tensor(100000.0)  # LyCORIS writes alpha = its dim setting here
    back = LoKrModule.from_tensors(lin, tensors)
    assert back.scale == 1.0
    assert torch.equal(back.delta_weight(), torch.kron(m.lokr_w1, m.lokr_w2))
    back.load_state_dict(tensors)
    assert back.scale == 1.0


# --------------------------------------------------------------------------- 4. training regularisers
@pytest.mark.parametrize("algo,kind", [("lora", "linear"), ("lora", "conv3"), ("loha", "linear"), ("loha", "conv3"),
                                       ("lokr", "linear"), ("lokr", "conv3")])
def test_regularisers(algo, kind):
    base = make_layer(kind)
    x = make_input(kind)
    kw = {"factor": 4} if algo == "lokr" else {}
    clean = OURS[algo](base, 4, 2, **kw)
    randomize(clean)
    noisy = OURS[algo](base, 4, 2, dropout=0.3, rank_dropout=0.5, module_dropout=0.5, **kw)
    noisy.load_state_dict(clean.state_dict())
    with torch.no_grad():
        plain = base(x)
        clean.attach()
        ref = base(x)
        clean.detach()
        assert (ref - plain).abs().max() > 100 * tol(ref)

        # eval mode: no effect at all, deterministic
        noisy.eval()
        noisy.attach()
        for seed in range(3):
            torch.manual_seed(seed)
            assert torch.equal(base(x), ref)

        # train mode: reproducible with a seed, different across seeds, module dropout gives base output
        noisy.train()
        outs = []
        for seed in range(12):
            torch.manual_seed(seed)
            a = base(x)
            torch.manual_seed(seed)
            assert torch.equal(base(x), a)
            outs.append(a)
        assert any(torch.equal(o, plain) for o in outs), "module_dropout=0.5 must skip the adapter sometimes"
        adapted = [o for o in outs if not torch.equal(o, plain)]
        assert adapted and all(not torch.equal(o, ref) for o in adapted), "dropouts must change the output"
        assert len({o.sum().item() for o in adapted}) > 1

        noisy.module_dropout = 1.0
        for seed in range(3):
            torch.manual_seed(seed)
            assert torch.equal(base(x), plain)

        # rank dropout alone changes the output (and is seeded)
        noisy.module_dropout, noisy.dropout = 0.0, 0.0
        torch.manual_seed(5)
        a = base(x)
        torch.manual_seed(5)
        assert torch.equal(base(x), a)
        assert not torch.equal(a, ref) and not torch.equal(a, plain)
        # ... and so does plain dropout alone
        noisy.rank_dropout, noisy.dropout = 0.0, 0.3
        torch.manual_seed(5)
        b = base(x)
        assert not torch.equal(b, ref)
        noisy.dropout = 0.0
        assert_close(base(x), ref, "train mode without regularisers")
        noisy.detach()


@torch.no_grad()
def test_lora_rank_dropout_is_unbiased():
    """LoRA's rank dropout masks rank channels and rescales by 1/(1-p): the mean over masks is the clean output."""
    base = make_layer("linear")
    x = make_input("linear")
    mod = LoRAModule(base, 8, 8, rank_dropout=0.5).eval()
    randomize(mod)
    clean = mod.delta_forward(x)
    mod.train()
    torch.manual_seed(0)
    mean = torch.stack([mod.delta_forward(x) for _ in range(4000)]).mean(0)
    assert (mean - clean).abs().max() < 0.1 * clean.abs().max()


# ------------------------------------------------------------------------ tiny models (5. and 6.)
try:
    from tiny import tiny_components  # tests/tiny.py (tests/ is on sys.path under pytest)
except ImportError:  # pragma: no cover - fallback when the helper is absent
    tiny_components = None


def _inline_tiny() -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    te = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, bos_token_id=998,
                                      eos_token_id=999, pad_token_id=999))
    return {"unet": unet.eval(), "text_encoder": te.eval()}


@pytest.fixture(scope="module")
def tiny_models() -> dict:
    parts = tiny_components("sd1") if tiny_components is not None else _inline_tiny()
    return {"unet": parts["unet"], "text_encoder": parts["text_encoder"]}


@pytest.fixture
def tiny(tiny_models) -> dict:
    """Fresh copies, so tests may attach, merge and train freely."""
    return {k: copy.deepcopy(v) for k, v in tiny_models.items()}


def tiny_inputs(tiny: dict, batch: int = 2):
    g = torch.Generator().manual_seed(7)
    unet, te = tiny["unet"], tiny["text_encoder"]
    cfg = te.config
    ids = torch.randint(0, min(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id), (batch, 8), generator=g)
    ids[:, 0] = cfg.bos_token_id
    ids[:, -1] = cfg.eos_token_id
    size = unet.config.sample_size
    latents = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    return ids, latents, torch.tensor([10, 500])


def run_tiny(unet, te, ids, latents, t):
    enc = te(ids).last_hidden_state
    return unet(latents, t, encoder_hidden_states=enc).sample


@torch.no_grad()
def randomize_network(net: Network, std: float = 0.05) -> None:
    for i, m in enumerate(net.values()):
        randomize(m, seed=100 + i, std=std)


# ----------------------------------------------------------------------------- 5. gradients
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_gradients_reach_adapters_only(tiny, algo):
    unet, te = tiny["unet"], tiny["text_encoder"]
    cfg = NetworkConfig(algo=algo, rank=4, alpha=2, preset="full", bias="lora_only",
                        modules_to_save=[r"unet\.conv_out"])
    net = Network.create({"unet": unet, "te1": te}, cfg)
    net.freeze_bases()
    net.attach()
    assert isinstance(net["unet/conv_out"], FullModule)
    assert all(not p.requires_grad for model in (unet, te) for p in model.parameters())
    assert all(p.requires_grad for p in net.parameters())
    ids, latents, t = tiny_inputs(tiny)
    loss = run_tiny(unet, te, ids, latents, t).pow(2).mean()
    loss.backward()

    for model in (unet, te):
        assert all(p.grad is None for p in model.parameters())
    n_bias = 0
    for comp, path, mod in net.items_by_module():
        for name, p in mod.named_parameters():
            assert p.grad is not None, f"{comp}.{path}.{name} got no gradient"
        if isinstance(mod, FullModule):
            assert path == "conv_out" and mod.diff.grad.abs().sum() > 0 and mod.diff_b.grad.abs().sum() > 0
            continue
        zero_init = [p for n, p in mod.named_parameters() if n in ZERO_INIT[algo]]
        assert len(zero_init) == 1 and zero_init[0].grad.abs().sum() > 0, f"{comp}.{path}: no signal"
        if mod.base.bias is not None:
            n_bias += 1
            assert mod.diff_b is not None and mod.diff_b.grad.abs().sum() > 0, f"{comp}.{path}.diff_b"
        else:
            assert mod.diff_b is None
    assert n_bias > 10
    assert {c for c, _, _ in net.items_by_module()} == {"unet", "te1"}


def test_bias_all_and_norm_modules_to_save(tiny):
    """bias="all": every biased Linear/Conv gets a bias delta (bias-only FullModules where no adapter sits);
    a norm layer in modules_to_save gets a NormModule. All train; merge/unmerge is exact."""
    unet, te = tiny["unet"], tiny["text_encoder"]
    cfg = NetworkConfig(rank=4, bias="all", modules_to_save=[r"unet\.conv_norm_out$"], components=("unet",))
    net = Network.create({"unet": unet, "te1": te}, cfg)
    assert net.components() == ["unet"]
    biased = {n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None}
    with_bias = {p for _, p, m in net.items_by_module() if m.diff_b is not None}
    assert with_bias == biased
    bias_only = [m for m in net.values() if isinstance(m, FullModule)]
    assert bias_only and all(m.diff is None for m in bias_only)
    norm = net["unet/conv_norm_out"]
    assert norm.algo == "norm" and norm.w_norm.shape == (unet.conv_norm_out.num_channels,)
    net.freeze_bases()
    net.attach()
    ids, latents, t = tiny_inputs(tiny)
    run_tiny(unet, te, ids, latents, t).pow(2).mean().backward()
    assert all(p.grad is None for p in unet.parameters())
    assert all(m.diff_b.grad.abs().sum() > 0 for m in bias_only)
    assert norm.w_norm.grad.abs().sum() > 0 and norm.b_norm.grad.abs().sum() > 0
    with torch.no_grad():
        randomize_network(net)
        state = {k: v.clone() for k, v in unet.state_dict().items()}
        bypass = run_tiny(unet, te, ids, latents, t)
        net.merge()
        assert_close(run_tiny(unet, te, ids, latents, t), bypass, "merged bias/norm deltas")
        net.unmerge()
        assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())


# ------------------------------------------------------------------ 6. presets, counts, Network.create
def _sd15_full_size():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        return UNet2DConditionModel(cross_attention_dim=768), CLIPTextModel(CLIPTextConfig())


def _sdxl_full_size():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, layers_per_block=2,
        )
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                         num_hidden_layers=32, num_attention_heads=20,
                                                         projection_dim=1280, hidden_act="gelu"))
    return unet, te1, te2


def test_preset_counts_sd15():
    unet, te = _sd15_full_size()
    assert len(preset_modules(unet, "unet", "attn-mlp")) == 192
    assert len(preset_modules(unet, "unet", "full")) == 278
    assert len(preset_modules(unet, "unet", "all")) == 282
    assert len(preset_modules(unet, "unet", "attn")) == 128  # 16 transformers × 2 attentions × 4
    for preset in ("attn-mlp", "full", "all"):
        assert len(preset_modules(te, "te1", preset)) == 72
    assert len(preset_modules(te, "te1", "attn")) == 48
    assert preset_modules(unet, "unet", "none") == []
    full, attn_mlp = preset_modules(unet, "unet", "full"), preset_modules(unet, "unet", "attn-mlp")
    assert set(attn_mlp) <= set(full)
    assert set(preset_modules(unet, "unet", "all")) - set(full) == {
        "conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in attn_mlp
    assert "down_blocks.0.resnets.0.conv1" in full and "down_blocks.0.resnets.0.conv1" not in attn_mlp
    te_paths = preset_modules(te, "te1", "attn-mlp")
    assert any(p.endswith("layers.0.self_attn.q_proj") for p in te_paths)
    assert any(p.endswith("layers.11.mlp.fc2") for p in te_paths)


def test_preset_counts_sdxl():
    unet, te1, te2 = _sdxl_full_size()
    assert len(preset_modules(unet, "unet", "attn-mlp")) == 722
    assert len(preset_modules(unet, "unet", "full")) == 788
    te_total = len(preset_modules(te1, "te1", "attn-mlp")) + len(preset_modules(te2, "te2", "attn-mlp"))
    assert te_total == 264
    assert not any("text_projection" in p for p in preset_modules(te2, "te2", "full"))


def _layers_of(paths):
    import re

    return {int(m.group(1)) for p in paths if (m := re.search(r"layers\.(\d+)\.", p))}


def test_network_create_selection(tiny):
    unet, te = tiny["unet"], tiny["text_encoder"]
    models = {"unet": unet, "te1": te}
    base_unet = preset_modules(unet, "unet", "attn-mlp")
    base_te = preset_modules(te, "te1", "attn-mlp")

    def paths(net, comp):
        return [p for c, p, _ in net.items_by_module() if c == comp]

    net = Network.create(models, NetworkConfig(rank=4))
    assert paths(net, "unet") == base_unet and paths(net, "te1") == base_te
    assert all(isinstance(m, LoRAModule) and m.rank == 4 and float(m.alpha) == 4 for m in net.values())

    # exclude / include (regex searched in "<component>.<path>")
    net = Network.create(models, NetworkConfig(rank=4, exclude=[r"attn2", r"te1\..*mlp"]))
    assert paths(net, "unet") == [p for p in base_unet if "attn2" not in p]
    assert paths(net, "te1") == [p for p in base_te if "mlp" not in p]
    net = Network.create(models, NetworkConfig(rank=4, preset="none", include=[r"unet\.conv_in$", r"te1\..*\.fc1$"]))
    assert paths(net, "unet") == ["conv_in"]
    assert len(paths(net, "te1")) == te.config.num_hidden_layers and all(p.endswith("fc1") for p in paths(net, "te1"))

    # layers_to_transform + layers_pattern: CLIP encoder.layers.N; the UNet has no "layers.N" and is unaffected
    net = Network.create(models, NetworkConfig(rank=4, layers_to_transform=[1], layers_pattern="layers"))
    assert _layers_of(paths(net, "te1")) == {1}
    assert len(paths(net, "te1")) == len(base_te) // te.config.num_hidden_layers
    assert paths(net, "unet") == base_unet

    # components
    net = Network.create(models, NetworkConfig(rank=4, components=("unet",)))
    assert net.components() == ["unet"] and paths(net, "unet") == base_unet

    # rank_pattern / alpha_pattern
    net = Network.create(models, NetworkConfig(rank=4, alpha=2, rank_pattern={r"attn1\.to_q$": 2, r"fc2$": 6},
                                               alpha_pattern={r"attn1\.to_q$": 1.5}))
    for comp, path, m in net.items_by_module():
        if path.endswith("attn1.to_q"):
            assert (m.rank, float(m.alpha), m.scale) == (2, 1.5, 0.75)
            assert m.lora_down.weight.shape[0] == 2
        elif path.endswith("fc2"):
            assert (m.rank, float(m.alpha)) == (6, 2)
        else:
            assert (m.rank, float(m.alpha)) == (4, 2)

    # conv_rank / conv_alpha apply to k×k convs (preset full); 1×1 convs and Linears keep rank / alpha
    full = preset_modules(unet, "unet", "full")
    kxk = [p for p in full if isinstance(unet.get_submodule(p), nn.Conv2d) and unet.get_submodule(p).kernel_size != (1, 1)]
    assert kxk and len(kxk) < len(full)
    net = Network.create(models, NetworkConfig(algo="locon", rank=4, alpha=4, conv_rank=2, conv_alpha=1, preset="full"))
    assert paths(net, "unet") == full
    for comp, path, m in net.items_by_module():
        if comp == "unet" and path in kxk:
            assert (m.rank, float(m.alpha)) == (2, 1) and m.lora_down.weight.shape[0] == 2
        else:
            assert (m.rank, float(m.alpha)) == (4, 4)
    net = Network.create(models, NetworkConfig(rank=4, conv_rank=0, preset="full"))
    assert paths(net, "unet") == [p for p in full if p not in kxk]
    # LoKr / LoHa options reach the modules
    net = Network.create(models, NetworkConfig(algo="lokr", rank=2, factor=4, decompose_both=True, preset="full",
                                               tucker=True, dora=True))
    conv1 = net["unet/down_blocks/0/resnets/0/conv1"]
    assert isinstance(conv1, LoKrModule) and conv1.tucker and conv1.dora_scale is not None
    assert conv1.lokr_w2_a.shape == (2, factorization(conv1.shape[0], 4)[1])

    with pytest.raises(ValueError):
        NetworkConfig(algo="nope")
    with pytest.raises(ValueError):
        NetworkConfig(preset="nope")


def test_network_multiplier_and_report(tiny):
    unet, te = tiny["unet"], tiny["text_encoder"]
    ids, latents, t = tiny_inputs(tiny)
    with torch.no_grad():
        ref = run_tiny(unet, te, ids, latents, t)
    net = Network.create({"unet": unet, "te1": te}, NetworkConfig(algo="loha", rank=4, alpha=2, preset="full"))
    randomize_network(net)
    net.attach()
    with torch.no_grad():
        full = run_tiny(unet, te, ids, latents, t)
        assert (full - ref).abs().max() > 1e-3
        net.set_multiplier(0)
        assert net.multiplier == 0
        assert torch.equal(run_tiny(unet, te, ids, latents, t), ref)

        # per-component strength: text encoder at 1, UNet at 0 == text encoder adapters alone
        net.set_multiplier(1.0)
        net.set_multiplier(0.0, component="unet")
        assert net.multiplier == 1.0
        assert all(m.multiplier == (0.0 if c == "unet" else 1.0) for c, _, m in net.items_by_module())
        te_only = run_tiny(unet, te, ids, latents, t)
        assert not torch.equal(te_only, ref) and not torch.equal(te_only, full)
        for c, _, m in net.items_by_module():
            if c == "unet":
                m.detach()
        assert torch.equal(run_tiny(unet, te, ids, latents, t), te_only)
        net.attach()

        # merged mode agrees with bypass over the whole model, and unmerges exactly
        state = {k: v.clone() for k, v in unet.state_dict().items()}
        net.set_multiplier(0.7)
        bypass = run_tiny(unet, te, ids, latents, t)
        net.merge()
        assert_close(run_tiny(unet, te, ids, latents, t), bypass, "merged network")
        net.unmerge()
        assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())

    # parameter report
    net2 = Network.create({"unet": unet, "te1": te},
                          NetworkConfig(algo="lokr", rank=4, preset="full", modules_to_save=[r"unet\.conv_out"]))
    for n in (net, net2):
        report = n.parameter_report()
        total = 0
        for comp, algos in report.items():
            for algo, row in algos.items():
                mods = [m for c, _, m in n.items_by_module() if c == comp and m.algo == algo]
                assert row["modules"] == len(mods)
                assert row["parameters"] == sum(p.numel() for m in mods for p in m.parameters())
                total += row["parameters"]
        assert total == sum(p.numel() for p in n.parameters())
        assert sum(r["modules"] for a in report.values() for r in a.values()) == len(n)
        assert f"{total:,}" in n.format_report()
    assert set(net2.parameter_report()["unet"]) == {"lokr", "full"}
    assert net2.parameter_report()["unet"]["full"] == {"modules": 1, "parameters": unet.conv_out.weight.numel()
                                                       + unet.conv_out.bias.numel()}
