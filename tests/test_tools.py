"""Acceptance tests of the adapter tools (sdlora.tools and the merge/resize/extract/convert commands).

Numbers asserted: concat == applying both (tiny UNet outputs); svd at full rank == the exact weighted sum
(fp32 tolerance) with the error falling as the rank grows; resize to the original rank is lossless (1e-6);
extract recovers the ΔW of a LoRA baked into a tiny model; convert round trips are bit-identical; outputs
load in diffusers (every module matched, same outputs) and lycoris-lora. Bad inputs give clear errors and
leave no file behind.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from sdlora.files import tensors as files
from sdlora.adapters import load_adapter, save_adapter
from sdlora.cli import main
from sdlora.errors import AdapterFileError, ConfigError
from sdlora.keys import kohya_name, normalize_module_path
from sdlora.networks import Network, NetworkConfig
from sdlora.tools import convert, extract, merge, parse_input, resize
from sdlora.tools.extract import TunedWeights
from tiny import TEXT_DIM, tiny_components, tiny_pipeline


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine (idle OpenMP workers spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def models_of(parts: dict) -> dict:
    out = {"unet": parts["unet"], "te1": parts["text_encoder"]}
    if "text_encoder_2" in parts:
        out["te2"] = parts["text_encoder_2"]
    return out


def make_network(models: dict, seed: int, std: float = 0.1, **cfg) -> Network:
    """A Network with random (non-zero) factors; DoRA magnitudes stay the row norms of W."""
    torch.manual_seed(seed)
    net = Network.create(models, NetworkConfig(preset="full", **cfg))
    with torch.no_grad():
        for module in net.values():
            for name, p in module.named_parameters():
                if name != "dora_scale":
                    p.normal_(0, std)
    return net


def make_file(path: Path, models: dict, family: str, seed: int, dtype=None, **cfg) -> Path:
    save_adapter(make_network(models, seed, **cfg), path, family, dtype=dtype)
    return path


def deltas(path, models: dict, family: str) -> dict:
    """{(component, path): effective ΔW at strength 1} of a file as sdlora loads it."""
    net, report = load_adapter(path, models, family, attach=False)
    assert report.ok
    out = {}
    with torch.no_grad():
        for c, p, m in net.items_by_module():
            w = m.base.weight.detach().float()
            out[(c, normalize_module_path(c, p))] = m.merged_weight(w, 1.0) - w
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def unet_out(unet, family: str = "sd1") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 2 * TEXT_DIM if family == "sdxl" else TEXT_DIM, generator=g)
    with torch.no_grad():
        return unet(x, 10, encoder_hidden_states=ctx).sample


def tensors_of(path) -> dict:
    return files.read_tensors(path)[0]


def assert_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def sd1():
    parts = tiny_components("sd1")
    return parts, models_of(parts)


@pytest.fixture(scope="module")
def sdxl():
    parts = tiny_components("sdxl")
    return parts, models_of(parts)


@pytest.fixture(scope="module")
def adapters(sd1, tmp_path_factory):
    """SD1 adapter files: LoRA/LoCon rank 4 (alpha 2), rank 2 (alpha 2), LoHa, LoKr, DoRA."""
    _, models = sd1
    d = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_file(d / "a.safetensors", models, "sd1", 1, rank=4, alpha=2),
        "b": make_file(d / "b.safetensors", models, "sd1", 2, rank=2, alpha=2),
        "loha": make_file(d / "loha.safetensors", models, "sd1", 3, algo="loha", rank=2, alpha=1),
        "lokr": make_file(d / "lokr.safetensors", models, "sd1", 4, algo="lokr", rank=2, alpha=1, factor=4,
                          decompose_both=True),
        "dora": make_file(d / "dora.safetensors", models, "sd1", 5, rank=2, alpha=1, dora=True, std=0.02),
    }


# ---------------------------------------------------------------------------------------------- merge
def test_parse_input():
    assert parse_input("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_input("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_input("C:/x/a.safetensors:-1") == ("C:/x/a.safetensors", -1.0)
    assert parse_input("C:/x/a.safetensors") == ("C:/x/a.safetensors", 1.0)


def test_concat_equals_applying_both(sd1, adapters, tmp_path):
    parts, models = sd1
    out = tmp_path / "c.safetensors"
    report = merge([(adapters["a"], 0.7), (adapters["b"], -0.5)], out, model=models)
    assert report.modules == len(deltas(adapters["a"], models, "sd1")) and report.relative_error < 1e-6
    assert set(report.ranks()) == {6}  # 4 + 2: concatenated, nothing dropped
    unet = parts["unet"]
    base = unet_out(unet)
    na, _ = load_adapter(adapters["a"], models, "sd1", multiplier=0.7)
    nb, _ = load_adapter(adapters["b"], models, "sd1", multiplier=-0.5)
    both = unet_out(unet)
    na.detach(), nb.detach()
    nm, _ = load_adapter(out, models, "sd1")
    merged = unet_out(unet)
    nm.detach()
    assert rel(both, base) > 1e-2  # the adapters do change the output
    assert rel(merged, both) < 1e-5
    assert torch.equal(unet_out(unet), base)  # detached: the base is back


def test_svd_full_rank_equals_sum_and_error_falls_with_rank(sd1, adapters, tmp_path):
    _, models = sd1
    inputs = [(adapters["a"], 0.7), (adapters["loha"], 0.5), (adapters["lokr"], -0.3)]
    want: dict = {}
    for path, w in inputs:
        for k, d in deltas(path, models, "sd1").items():
            want[k] = want.get(k, 0) + w * d
    errors = []
    for r in (1, 2, 4, 8, 16, 10_000):
        out = tmp_path / f"s{r}.safetensors"
        errors.append(merge(inputs, out, rank=r, model=models).relative_error)
    assert all(a > b for a, b in zip(errors, errors[1:-1])), errors
    assert errors[-1] < 1e-6
    got = deltas(tmp_path / "s10000.safetensors", models, "sd1")
    assert got.keys() == want.keys()
    assert max(rel(got[k], want[k]) for k in want) < 1e-5
    # the report's figure is the real distance of what was written
    got4 = deltas(tmp_path / "s4.safetensors", models, "sd1")
    num = sum(float((got4[k] - want[k]).double().norm() ** 2) for k in want)
    den = sum(float(want[k].double().norm() ** 2) for k in want)
    assert math.isclose(math.sqrt(num / den), errors[2], rel_tol=1e-4)


def test_svd_folds_dora_against_the_base(sd1, adapters, tmp_path):
    """With base weights (model), a DoRA input's effective change at strength 1, merged_weight(W) − W, is what
    gets summed and re-factorised; the output is a plain LoRA."""
    _, models = sd1
    out = tmp_path / "folded.safetensors"
    report = merge([(adapters["dora"], 1.0), (adapters["b"], 0.5)], out, rank=10_000, model=models)
    want = deltas(adapters["dora"], models, "sd1")
    for k, d in deltas(adapters["b"], models, "sd1").items():
        want[k] = want[k] + 0.5 * d
    got = deltas(out, models, "sd1")
    assert not any(k.endswith("dora_scale") for k in tensors_of(out))
    assert max(rel(got[k], want[k]) for k in want) < 1e-5 and report.relative_error < 1e-6


def test_svd_energy_threshold(sd1, adapters, tmp_path):
    _, models = sd1
    inputs = [(adapters["loha"], 1.0), (adapters["b"], 1.0)]
    low = merge(inputs, tmp_path / "e5.safetensors", energy=0.5, model=models)
    high = merge(inputs, tmp_path / "e99.safetensors", energy=0.99, model=models)
    capped = merge(inputs, tmp_path / "cap.safetensors", energy=0.99, rank=3, model=models)
    assert max(low.ranks()) < max(high.ranks()) and max(capped.ranks()) <= 3
    for report, energy in ((low, 0.5), (high, 0.99)):  # kept energy ≥ threshold: error² ≤ 1 − energy
        assert all(f.relative ** 2 <= 1 - energy + 1e-5 for f in report.fits)


def test_merge_keeps_uniform_gamma_and_unifies_dialects(sd1, adapters, tmp_path):
    _, models = sd1
    peft = tmp_path / "a_peft.safetensors"
    convert(adapters["a"], peft, to="peft", model=models)
    out = tmp_path / "twice.safetensors"
    report = merge([(adapters["a"], 1.0), (peft, 1.0)], out, model=models)
    want = deltas(adapters["a"], models, "sd1")
    got = deltas(out, models, "sd1")
    assert got.keys() == want.keys() and report.modules == len(want)
    assert max(rel(got[k], 2 * want[k]) for k in want) < 1e-6
    t = tensors_of(out)
    name = kohya_name("unet", "down_blocks.0.attentions.0.proj_in", "sd1")
    assert float(t[f"{name}.alpha"]) == 4.0  # both γ = 2/4: kept, alpha = γ · (4 + 4)


def test_merge_sdxl_sgm_and_diffusers_names_without_a_model(tmp_path):
    """Real-size SDXL names resolve against the shipped config (no model): an SGM-named and a
    diffusers-named file of the same module merge into one module."""
    torch.manual_seed(0)
    up, down = torch.randn(640, 2), torch.randn(2, 640)
    sgm = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    dif = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    meta = {"ss_base_model_version": "sdxl_base_v1-0"}
    for name, path in ((sgm, "x.safetensors"), (dif, "y.safetensors")):
        files.write_tensors(tmp_path / path, {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                                              f"{name}.alpha": torch.tensor(2.0)}, meta)
    report = merge([(tmp_path / "x.safetensors", 1.0), (tmp_path / "y.safetensors", 0.5)],
                   tmp_path / "z.safetensors", rank=2)
    t = tensors_of(tmp_path / "z.safetensors")
    assert report.modules == 1 and f"{sgm}.lora_up.weight" in t and report.relative_error < 1e-6
    got = t[f"{sgm}.lora_up.weight"] @ t[f"{sgm}.lora_down.weight"] * float(t[f"{sgm}.alpha"]) / 2
    assert rel(got, 1.5 * up @ down) < 1e-5


# --------------------------------------------------------------------------------------------- resize
def test_resize_to_original_rank_is_lossless_and_keeps_gamma(sd1, adapters, tmp_path):
    _, models = sd1
    out = tmp_path / "r4.safetensors"
    report = resize(adapters["a"], out, rank=4, model=models)
    want, got = deltas(adapters["a"], models, "sd1"), deltas(out, models, "sd1")
    assert got.keys() == want.keys()
    assert max(rel(got[k], want[k]) for k in want) < 1e-6 and report.relative_error < 1e-6
    half = tmp_path / "r2.safetensors"
    resize(adapters["a"], half, rank=2, model=models)
    for path, r in ((out, 4), (half, 2)):
        t = tensors_of(path)
        alphas = {float(v) for k, v in t.items() if k.endswith(".alpha")}
        assert alphas == {2.0 / 4 * r}  # γ = alpha/rank = 0.5 kept


def test_resize_any_algorithm_error_falls(sd1, adapters, tmp_path):
    _, models = sd1
    for algo in ("loha", "lokr"):
        errs = [resize(adapters[algo], tmp_path / f"{algo}{r}.safetensors", rank=r, model=models).relative_error
                for r in (1, 2, 4, 64)]
        assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-6, (algo, errs)
        t = tensors_of(tmp_path / f"{algo}64.safetensors")
        assert not any("hada" in k or "lokr" in k for k in t)


def test_resize_dora_keeps_magnitude(sd1, adapters, tmp_path):
    _, models = sd1
    out = tmp_path / "dora2.safetensors"
    report = resize(adapters["dora"], out, rank=2, model=models)
    a, b = tensors_of(adapters["dora"]), tensors_of(out)
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("dora_scale"))
    want, got = deltas(adapters["dora"], models, "sd1"), deltas(out, models, "sd1")
    assert max(rel(got[k], want[k]) for k in want) < 1e-5 and report.relative_error < 1e-6


def test_resize_real_size_files_without_a_model(tmp_path):
    """SD1.5-shaped modules (LoRA linear, LoHa on a 3×3 conv whose kernel is flattened in the file) resolve
    and take their shapes from the shipped config: no model needed."""
    torch.manual_seed(0)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    t = {f"{q}.lora_down.weight": torch.randn(4, 768), f"{q}.lora_up.weight": torch.randn(320, 4),
         f"{q}.alpha": torch.tensor(4.0)}
    t.update({f"{conv}.hada_w1_a": torch.randn(320, 2), f"{conv}.hada_w1_b": torch.randn(2, 320 * 9),
              f"{conv}.hada_w2_a": torch.randn(320, 2), f"{conv}.hada_w2_b": torch.randn(2, 320 * 9),
              f"{conv}.alpha": torch.tensor(2.0)})
    files.write_tensors(tmp_path / "real.safetensors", t)
    report = resize(tmp_path / "real.safetensors", tmp_path / "out.safetensors", rank=4)
    out = tensors_of(tmp_path / "out.safetensors")
    assert out[f"{conv}.lora_down.weight"].shape == (4, 320, 3, 3) and out[f"{conv}.lora_up.weight"].shape == (320, 4, 1, 1)
    assert out[f"{q}.lora_down.weight"].shape == (4, 768)
    assert min(f.relative for f in report.fits) < 1e-6  # the rank-4 LoRA is exact; LoHa (rank ≤ 4) too
    assert report.relative_error < 1e-5


# -------------------------------------------------------------------------------------------- extract
@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """A tiny SD1 pipeline saved as the base, the same with a known LoCon baked in (W += ΔW) as the tuned
    model, and the LoCon's file."""
    d = tmp_path_factory.mktemp("models")
    pipe = tiny_pipeline("sd1")
    pipe.save_pretrained(d / "base")
    models = {"unet": pipe.unet, "te1": pipe.text_encoder}
    net = make_network(models, 7, rank=3, alpha=1.5)
    save_adapter(net, d / "known.safetensors", "sd1")
    net.merge()
    pipe.save_pretrained(d / "tuned")
    net.unmerge()
    return d


def test_extract_recovers_a_baked_lora(baked, tmp_path):
    out = tmp_path / "x.safetensors"
    assert TunedWeights(baked / "tuned", "sd1").model is None  # streamed from its files, not instantiated
    report = extract(baked / "base", baked / "tuned", out, rank=3)
    parts = tiny_components("sd1")
    models = models_of(parts)
    want, got = deltas(baked / "known.safetensors", models, "sd1"), deltas(out, models, "sd1")
    assert got.keys() == want.keys() and report.modules == len(want)
    assert max(rel(got[k], want[k]) for k in want) < 1e-4 and report.relative_error < 1e-5
    assert set(report.ranks()) == {3}
    t = tensors_of(out)
    assert {float(v) for k, v in t.items() if k.endswith(".alpha")} == {3.0}  # γ = 1
    skipped = extract(baked / "base", baked / "tuned", tmp_path / "noconv.safetensors", rank=3, conv_rank=0)
    assert skipped.modules < report.modules and any("skipped" in n for n in skipped.notes)


def test_extract_streams_a_single_file_tuned_model(baked, tmp_path):
    from sdlora.models import open_model, save_model

    single = save_model(open_model(baked / "tuned"), tmp_path / "tuned.safetensors")
    weights = TunedWeights(single, "sd1")
    assert weights.plan is not None and weights.model is None  # read entry by entry, not instantiated
    a = extract(baked / "base", single, tmp_path / "a.safetensors", rank=3)
    b = extract(baked / "base", baked / "tuned", tmp_path / "b.safetensors", rank=3)
    assert a.modules == b.modules and a.relative_error < 1e-5
    ta, tb = tensors_of(tmp_path / "a.safetensors"), tensors_of(tmp_path / "b.safetensors")
    assert ta.keys() == tb.keys() and all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)


# -------------------------------------------------------------------------------------------- convert
def test_convert_round_trips_are_identical(sd1, sdxl, adapters, tmp_path):
    _, models = sd1
    half = make_file(tmp_path / "half.safetensors", models, "sd1", 9, dtype="fp16", rank=2, alpha=1, dora=True)
    for src in (adapters["a"], half):
        for to in ("peft", "lycoris"):
            there, back = tmp_path / f"{src.stem}.{to}.safetensors", tmp_path / f"{src.stem}.{to}.back.safetensors"
            convert(src, there, to=to, model=models)
            convert(there, back, to="kohya", model=models)
            assert_identical(tensors_of(back), tensors_of(src))
            assert files.read_metadata(back)["sshs_model_hash"] == files.read_metadata(src)["sshs_model_hash"]
    # SDXL: SGM names <-> diffusers names
    _, xmodels = sdxl
    x = make_file(tmp_path / "xl.safetensors", xmodels, "sdxl", 10, rank=2)
    convert(x, tmp_path / "xl_d.safetensors", to="kohya", unet_names="diffusers", model=xmodels)
    convert(tmp_path / "xl_d.safetensors", tmp_path / "xl_s.safetensors", to="kohya", unet_names="sgm", model=xmodels)
    d = tensors_of(tmp_path / "xl_d.safetensors")
    assert any("down_blocks" in k for k in d) and not any("input_blocks" in k for k in d)
    assert_identical(tensors_of(tmp_path / "xl_s.safetensors"), tensors_of(x))
    # LoHa to lycoris and back: any algorithm
    convert(adapters["loha"], tmp_path / "h.safetensors", to="lycoris", model=models)
    convert(tmp_path / "h.safetensors", tmp_path / "h2.safetensors", to="kohya", model=models)
    assert_identical(tensors_of(tmp_path / "h2.safetensors"), tensors_of(adapters["loha"]))


# -------------------------------------------------------------------------------------------- oracles
def test_outputs_load_in_diffusers_and_lycoris(adapters, tmp_path):
    from lycoris import create_lycoris_from_weights

    parts = tiny_components("sd1")
    models = models_of(parts)
    merged = tmp_path / "m.safetensors"
    merge([(adapters["a"], 0.7), (adapters["loha"], 0.5)], merged, rank=4, model=models)
    peft = tmp_path / "m_peft.safetensors"
    convert(merged, peft, to="peft", model=models)
    lyco = tmp_path / "m_lyco.safetensors"
    convert(merged, lyco, to="lycoris", model=models)
    net, _ = load_adapter(merged, models, "sd1")
    ours = unet_out(parts["unet"])
    n_unet = sum(1 for c, _, _ in net.items_by_module() if c == "unet")
    net.detach()
    for path in (merged, peft):  # diffusers: every module matched, same outputs
        pipe = tiny_pipeline("sd1")
        pipe.load_lora_weights(str(path))
        loaded = sum(1 for m in (pipe.unet, pipe.text_encoder) for n, _ in m.named_modules() if n.endswith(".lora_A"))
        assert loaded == len(net)
        assert rel(unet_out(pipe.unet), ours) < 1e-5, path.name
    unet = copy.deepcopy(parts["unet"])  # lycoris-lora's own wrapper on the UNet
    lnet, _ = create_lycoris_from_weights(1.0, str(lyco), unet)
    assert len(lnet.loras) == n_unet
    lnet.apply_to()
    assert rel(unet_out(unet), ours) < 1e-5


# ----------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_clear_errors_and_leave_nothing(sd1, sdxl, adapters, tmp_path):
    _, models = sd1
    _, xmodels = sdxl
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.safetensors"
    xl = make_file(tmp_path / "xl.safetensors", xmodels, "sdxl", 11, rank=2)
    cases = [
        (lambda: merge([(tmp_path / "missing.safetensors", 1.0)], out, model=models), AdapterFileError, "no such file"),
        (lambda: merge([(adapters["a"], 1), (xl, 1)], out), AdapterFileError, "different model families"),
        (lambda: resize(adapters["a"], out, rank=0, model=models), ConfigError, "--rank must be at least 1"),
        (lambda: resize(adapters["a"], out, rank=-2, model=models), ConfigError, "--rank must be at least 1"),
        (lambda: resize(adapters["a"], out, energy=0.0, model=models), ConfigError, "--energy must be in (0, 1]"),
        (lambda: resize(adapters["a"], out, energy=1.5, model=models), ConfigError, "--energy must be in (0, 1]"),
        (lambda: resize(adapters["a"], out, model=models), ConfigError, "--rank R"),
        (lambda: extract(tmp_path, tmp_path, out, rank=0), ConfigError, "--rank must be at least 1"),
        (lambda: merge([(adapters["loha"], 1.0)], out, model=models), ConfigError, "concat joins plain LoRA"),
        (lambda: merge([(adapters["a"], 1.0)], out, rank=2, method="bogus", model=models), ConfigError, "unknown merge"),
        (lambda: convert(adapters["loha"], out, to="peft", model=models), AdapterFileError, "cannot hold"),
        (lambda: convert(xl, out, to="lycoris", model=xmodels), AdapterFileError, "two text encoders"),
        (lambda: convert(adapters["a"], out, to="onnx", model=models), ConfigError, "unknown target format"),
        (lambda: resize(adapters["a"], out, rank=2), AdapterFileError, "pass --model"),  # tiny file, real-size reference
    ]
    for call, kind, text in cases:
        with pytest.raises(kind) as err:
            call()
        assert text in str(err.value), str(err.value)
        assert left_in(out_dir) == []


def test_dora_without_base_weights_is_refused(tmp_path):
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    t = {f"{name}.lora_down.weight": torch.randn(2, 320, 1, 1), f"{name}.lora_up.weight": torch.randn(320, 2, 1, 1),
         f"{name}.alpha": torch.tensor(1.0), f"{name}.dora_scale": torch.rand(320, 1, 1, 1)}
    files.write_tensors(tmp_path / "d.safetensors", t, {"ss_base_model_version": "sd_v1"})
    with pytest.raises(ConfigError, match="DoRA.*pass --model"):
        merge([(tmp_path / "d.safetensors", 1.0)], tmp_path / "o.safetensors", rank=2)
    assert not (tmp_path / "o.safetensors").exists()
    # resize keeps DoRA (magnitude carried), so it needs no base
    resize(tmp_path / "d.safetensors", tmp_path / "r.safetensors", rank=2)
    assert torch.equal(tensors_of(tmp_path / "r.safetensors")[f"{name}.dora_scale"], t[f"{name}.dora_scale"])


# ------------------------------------------------------------------------------------------------ CLI
def test_cli(baked, adapters, tmp_path, capsys):
    model = str(baked / "base")
    out = tmp_path / "c.safetensors"
    assert main(["merge", f"{adapters['a']}:0.7", f"{adapters['b']}:-0.5", "--model", model, "--out", str(out)]) == 0
    assert "merge (concat)" in capsys.readouterr().out and out.is_file()
    assert main(["resize", str(adapters["loha"]), "--energy", "0.9", "--model", model, "--out", str(tmp_path / "r.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "relative Frobenius error" in text and "overall" in text
    assert main(["convert", str(out), "--to", "peft", "--model", model, "--out", str(tmp_path / "p.safetensors")]) == 0
    assert main(["extract", "--base", model, "--tuned", str(baked / "tuned"), "--rank", "3",
                 "--out", str(tmp_path / "x.safetensors")]) == 0
    assert main(["resize", str(adapters["a"]), "--rank", "0", "--model", model, "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "--rank must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("shape, low", [((48, 64, 3, 3), None), ((300, 40), None), ((200, 300), 5),
                                        ((160, 32, 3, 3), 6)])
def test_svd_routes_give_the_best_truncation(monkeypatch, shape, low):
    """Every route (SVD for small layers; range for low-rank large ones; Gram for full-rank large ones)
    gives the optimal truncation error √(Σ_{i>r} σᵢ²) and is exact at full rank."""
    from sdlora.tools import svd as common

    torch.manual_seed(0)
    if low is None:
        delta = torch.randn(*shape)
    else:
        delta = (torch.randn(shape[0], low) @ torch.randn(low, math.prod(shape[1:]))).reshape(shape)
    flat = delta.reshape(shape[0], -1).double()
    s = torch.linalg.svdvals(flat)
    gram = []
    real_gram = common._gram_route
    monkeypatch.setattr(common, "_gram_route", lambda *a: gram.append(1) or real_gram(*a))
    for route in ("direct", "large"):
        if route == "large":
            monkeypatch.setattr(common, "SVD_DIRECT_MAX", 0)
        for r in (1, 3, 10_000):
            up, down = common.svd_factors(delta, r, None, gamma=0.25)
            assert down.shape[1:] == shape[1:] and up.shape[0] == shape[0]
            got = 0.25 * (up.flatten(1).double() @ down.flatten(1).double())
            err = float((got - flat).norm())
            want = float(s[r:].pow(2).sum().sqrt()) if r < len(s) else 0.0
            assert abs(err - want) <= 1e-5 * float(s.norm()), (route, r, err, want)
    assert bool(gram) == (low is None)  # low rank: the range route held it; full rank: the Gram route
