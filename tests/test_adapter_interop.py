"""Adapter files across implementations, with the reference packages as oracles (all offline, tiny models).

1. sdlora's kohya files (LoRA, LoCon) load in diffusers (`load_lora_weights`) with no key left over, a LoRA
   layer on every module, and the same outputs as sdlora's own bypass mode (alpha ≠ rank).
2. sdlora's files (LoRA, LoCon, LoHa, LoKr, + DoRA) load in the lycoris-lora package with every module
   matched and the same outputs. lycoris's loader (`create_lycoris_from_weights`) names a module
   `LORA_PREFIX + "_" + named_modules() path`, so kohya files are read with LORA_PREFIX set to `lora_unet` /
   `lora_te`; it has no SGM (original layout) names, so for the SDXL UNet the names are mapped with lycoris's
   own `utils.convert_diffusers_name_to_compvis` and the modules built with its `get_module`/`make_module`.
   transformers 5's CLIPTextModel has no `text_model` level; kohya names keep it, so lycoris reads text
   encoders through a wrapper that restores the transformers-4 tree.
3. Files written by lycoris-lora, by PEFT/diffusers (`save_lora_weights`, lora_alpha ≠ r in the adapter
   metadata), by diffusers' kohya export (`convert_state_dict_to_kohya`) and in diffusers' old key forms
   (`.lora.down.weight`, `lora_linear_layer`, attention processors) load in sdlora with every key used and
   the reference's outputs.
4. save -> load -> save is the identity (tensors, metadata, header layout and data bytes).
5. The PEFT dialect (`save_adapter(..., dialect="peft")`) loads in diffusers with the real alphas; LoHa/LoKr
   are refused with a clear error.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import warnings

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from sdlora.files import tensors as files
from sdlora.adapters import AdapterFile, load_adapter, save_adapter
from sdlora.errors import AdapterFileError
from sdlora.networks import Network, NetworkConfig
from tiny import tiny_components, tiny_pipeline

RTOL = 1e-4  # fp32: relative L2 error between implementations
MIN_EFFECT = 1e-3  # each compared output must move at least this much (relative) from the base model's
PRESETS = {"lora": "attn-mlp", "locon": "full"}
PEFT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv1", "conv2", "conv_shortcut", "time_emb_proj"]
PEFT_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads per op
    make every forward pass 10x slower (measured: 0.07 s vs 0.9-1.7 s per tiny UNet call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models(obj) -> dict[str, nn.Module]:
    """{"unet", "te1"[, "te2"]} of a pipeline or a tiny_components dict."""
    get = obj.get if isinstance(obj, dict) else (lambda k: getattr(obj, k, None))
    models = {"unet": get("unet"), "te1": get("text_encoder")}
    if get("text_encoder_2") is not None:
        models["te2"] = get("text_encoder_2")
    return models


def _randomise(params, seed: int = 0, std: float = 0.1) -> None:
    """Random adapter parameters (so ΔW ≠ 0); DoRA magnitudes perturbed around their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            noise = torch.randn(p.shape, generator=g)
            if "dora_scale" in name or "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * noise)
            else:
                p.copy_(noise * std)


def _network(models: dict, seed: int = 0, std: float = 0.1, **cfg) -> Network:
    cfg = {"algo": "lora", "rank": 4, "alpha": 2, "preset": "full", **cfg}
    net = Network.create(models, NetworkConfig(**cfg))
    _randomise(net.named_parameters(), seed, std)
    return net


def _counts(net: Network) -> dict[str, int]:
    out: dict[str, int] = {}
    for component, _, _ in net.items_by_module():
        out[component] = out.get(component, 0) + 1
    return out


def _probe(family: str) -> dict:
    g = torch.Generator().manual_seed(3)
    probe = {"ids": torch.randint(0, 500, (1, 77), generator=g), "x": torch.randn(1, 4, 16, 16, generator=g),
             "t": torch.tensor([10]), "ctx": torch.randn(1, 77, 64 if family == "sdxl" else 32, generator=g),
             "added": None}
    if family == "sdxl":
        probe["added"] = {"text_embeds": torch.randn(1, 32, generator=g),
                          "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]])}
    return probe


@torch.no_grad()
def _outputs(models: dict, family: str) -> dict[str, torch.Tensor]:
    """Each text encoder's last hidden state and the UNet's output on fixed inputs (the UNet gets a fixed
    context, so each component is compared on its own)."""
    p = _probe(family)
    out = {c: models[c](p["ids"]).last_hidden_state for c in ("te1", "te2") if c in models}
    out["unet"] = models["unet"](p["x"], p["t"], p["ctx"], added_cond_kwargs=p["added"]).sample
    return out


@functools.lru_cache(maxsize=None)
def _base(family: str) -> dict[str, torch.Tensor]:
    return _outputs(_models(tiny_components(family)), family)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _assert_same_outputs(got: dict, want: dict, family: str, components=None) -> None:
    base = _base(family)
    for c in components or want:
        assert _rel(got[c], want[c]) <= RTOL, (c, _rel(got[c], want[c]))
        assert _rel(want[c], base[c]) >= MIN_EFFECT, f"{c}: the adapter has no visible effect"


_KEY_WORDS = re.compile(r"unexpected|missing|not been correctly|not found|not compatible|filter out|ignored|"
                        r"no lora|does not match|mismatch", re.I)


@contextlib.contextmanager
def _load_reports():
    """Collect what diffusers, PEFT and transformers log (WARNING and up) or warn while loading."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _key_problems(messages: list[str]) -> list[str]:
    return [m for m in messages if _KEY_WORDS.search(m)]


def _peft_layers(models: dict) -> dict[str, int]:
    from peft.tuners.lora import LoraLayer

    return {c: n for c, m in models.items() if (n := sum(isinstance(x, LoraLayer) for x in m.modules()))}


def _file_modules(path) -> set[str]:
    return {k.split(".")[0] for k in load_file(str(path))}


def test_report_capture_sees_diffusers_and_peft_warnings():
    """The log capture used below does see what diffusers/PEFT report (their loggers do not propagate)."""
    with _load_reports() as messages:
        logging.getLogger("diffusers.utils.peft_utils").warning(
            "Loading adapter weights from state_dict led to unexpected keys found in the model: x.lora_A")
        logging.getLogger("peft.tuners.tuners_utils").warning("Found missing adapter keys")
        warnings.warn("unexpected keys: y", UserWarning)
    assert len(_key_problems(messages)) == 3


# ------------------------------------------------------------------------------ 1. sdlora -> diffusers
@pytest.mark.parametrize("family,algo", [("sd1", "lora"), ("sd1", "locon"), ("sdxl", "lora"), ("sdxl", "locon")])
def test_sdlora_kohya_file_loads_in_diffusers(tmp_path, family, algo):
    ours_pipe, their_pipe = tiny_pipeline(family), tiny_pipeline(family)
    ours = _models(ours_pipe)
    net = _network(ours, preset=PRESETS[algo], rank=4, alpha=2)
    path = tmp_path / f"{family}_{algo}.safetensors"
    save_adapter(net, path, family)
    assert all(float(v) == 2.0 for k, v in load_file(str(path)).items() if k.endswith(".alpha"))
    net.attach()

    with _load_reports() as messages:
        their_pipe.load_lora_weights(str(path))
    assert _key_problems(messages) == []
    theirs = _models(their_pipe)
    assert _peft_layers(theirs) == _counts(net), "every module of the file got a LoRA layer in diffusers"
    assert sum(_counts(net).values()) == len(_file_modules(path))
    _assert_same_outputs(_outputs(theirs, family), _outputs(ours, family), family)

    if family == "sd1" and algo == "locon":  # and through the whole pipeline: 2 steps with CFG, same latents
        def generate(pipe):
            return pipe("a photo of a cat", num_inference_steps=2, guidance_scale=5.0, height=32, width=32,
                        generator=torch.Generator().manual_seed(0), output_type="latent").images

        a, b = generate(ours_pipe), generate(their_pipe)
        assert _rel(b, a) <= RTOL


# ------------------------------------------------------------------------------- 2. sdlora -> lycoris
class _Transformers4(nn.Module):
    """transformers 4's module tree for a transformers 5 CLIPTextModel: `text_model.<its modules>`."""

    def __init__(self, te: nn.Module):
        super().__init__()
        self.text_model = te


def _lycoris_load(monkeypatch, path, root: nn.Module, prefix: str):
    """lycoris's own loader on ``root`` for module names ``prefix + "_" + path``; applied."""
    from lycoris.wrapper import LycorisNetwork, create_lycoris_from_weights

    monkeypatch.setattr(LycorisNetwork, "LORA_PREFIX", prefix)
    network, _ = create_lycoris_from_weights(1.0, str(path), root)
    network.apply_to()
    return network


LYCORIS_CASES = [  # algo, preset, dora, rank, alpha (LoKr rank 2 keeps w2 low-rank on the 32/64-wide layers)
    ("lora", "attn-mlp", False, 4, 2), ("lora", "full", False, 4, 2), ("loha", "full", False, 4, 2),
    ("lokr", "full", False, 2, 1), ("lora", "full", True, 4, 2), ("loha", "full", True, 4, 2),
    ("lokr", "full", True, 2, 1),
]


@pytest.mark.parametrize("algo,preset,dora,rank,alpha", LYCORIS_CASES)
def test_sdlora_file_loads_in_lycoris_sd1(tmp_path, monkeypatch, algo, preset, dora, rank, alpha):
    ours, theirs = _models(tiny_components("sd1")), _models(tiny_components("sd1"))
    net = _network(ours, algo=algo, preset=preset, dora=dora, rank=rank, alpha=alpha,
                   std=0.3 if algo == "loha" else 0.1)
    path = tmp_path / "a.safetensors"
    save_adapter(net, path, "sd1")
    net.attach()

    unet = _lycoris_load(monkeypatch, path, theirs["unet"], "lora_unet")
    te = _lycoris_load(monkeypatch, path, _Transformers4(theirs["te1"]), "lora_te")
    counts = _counts(net)
    assert (len(unet.loras), len(te.loras)) == (counts["unet"], counts["te1"])
    expected = {"lora": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}[algo]
    assert set(unet.algo_table) == set(te.algo_table) == {expected}
    # every key of the file is a key of lycoris's modules, and the other way round
    assert set(unet.state_dict()) | set(te.state_dict()) == set(load_file(str(path)))
    _assert_same_outputs(_outputs(theirs, "sd1"), _outputs(ours, "sd1"), "sd1")


@pytest.mark.parametrize("algo,dora,rank,alpha", [("lora", False, 4, 2), ("lokr", True, 2, 1)])
def test_sdlora_sdxl_file_in_lycoris(tmp_path, monkeypatch, algo, dora, rank, alpha):
    """lycoris's loader cannot read SGM UNet names (it matches none of them); its own diffusers -> SGM name
    table (utils.convert_diffusers_name_to_compvis) finds every one, and its modules built from our tensors
    give our outputs. Both text encoders load through its loader."""
    from lycoris.modules import get_module, make_module
    from lycoris.utils import convert_diffusers_name_to_compvis

    ours, theirs = _models(tiny_components("sdxl")), _models(tiny_components("sdxl"))
    net = _network(ours, algo=algo, preset="full", dora=dora, rank=rank, alpha=alpha)
    path = tmp_path / "xl.safetensors"
    save_adapter(net, path, "sdxl")
    net.attach()
    counts = _counts(net)
    state = load_file(str(path))

    te1 = _lycoris_load(monkeypatch, path, _Transformers4(theirs["te1"]), "lora_te1")
    te2 = _lycoris_load(monkeypatch, path, theirs["te2"], "lora_te2")  # CLIPTextModelWithProjection keeps text_model
    assert (len(te1.loras), len(te2.loras)) == (counts["te1"], counts["te2"])

    from lycoris.wrapper import LycorisNetwork, create_lycoris_from_weights

    monkeypatch.setattr(LycorisNetwork, "LORA_PREFIX", "lora_unet")
    by_diffusers_names, _ = create_lycoris_from_weights(1.0, str(path), theirs["unet"])
    assert len(by_diffusers_names.loras) == 0  # the limitation: SGM names are unknown to its loader

    unet_names = {k.split(".")[0] for k in state if k.startswith("lora_unet_")}
    used: set[str] = set()
    for name, module in theirs["unet"].named_modules():
        sgm = convert_diffusers_name_to_compvis("lora_unet_" + name.replace(".", "_"))
        if sgm not in unet_names:
            continue
        kind, params = get_module(state, sgm)
        lyco = make_module(kind, params, sgm, module)
        lyco.apply_to()
        used |= {f"{sgm}.{k}" for k in lyco.state_dict()}
    assert {k.split(".")[0] for k in used} == unet_names and len(unet_names) == counts["unet"]
    used |= set(te1.state_dict()) | set(te2.state_dict())
    assert used == set(state)
    _assert_same_outputs(_outputs(theirs, "sdxl"), _outputs(ours, "sdxl"), "sdxl")


# --------------------------------------------------------------------------------- 3. others -> sdlora
LYCORIS_WRITTEN = [  # algo, rank, alpha, extra create_lycoris arguments
    ("lora", 4, 2, {}), ("loha", 4, 2, {}), ("lokr", 2, 1, {}), ("lora", 4, 2, {"dora_wd": True}),
    ("lokr", 2, 1, {"dora_wd": True}), ("full", 4, 2, {}), ("loha", 4, 2, {"use_tucker": True}),
    ("lora", 4, 2, {"use_tucker": True, "train_norm": True}),  # Tucker LoCon and norm-layer deltas (w_norm/b_norm)
]


@pytest.mark.parametrize("algo,rank,alpha,extra", LYCORIS_WRITTEN)
def test_lycoris_written_file_loads_in_sdlora(tmp_path, algo, rank, alpha, extra):
    from lycoris import create_lycoris

    ref, ours = tiny_components("sd1"), _models(tiny_components("sd1"))
    written = []
    for component, key in (("unet", "unet"), ("te1", "text_encoder")):
        lyco = create_lycoris(ref[key], 1.0, linear_dim=rank, linear_alpha=alpha, algo=algo, **extra)
        lyco.apply_to()  # registers its modules; their parameters exist from here on
        _randomise(lyco.named_parameters(), seed=len(written), std=0.02 if algo == "full" else 0.2)
        path = tmp_path / f"{component}.safetensors"
        lyco.save_weights(str(path), None, {})
        written.append((path, len(lyco.loras), component))
    want = _outputs(_models(ref), "sd1")
    for path, n, component in written:
        assert all(k.startswith("lycoris_") for k in load_file(str(path)))
        net, report = load_adapter(path, ours, "sd1")
        assert report.ok, report.summary()
        assert report.total_matched == len(_file_modules(path)) == n
        assert report.matched == {component: n}
    _assert_same_outputs(_outputs(ours, "sd1"), want, "sd1")


def test_lycoris_written_sdxl_unet_loads_in_sdlora(tmp_path):
    from lycoris import create_lycoris

    ref, ours = tiny_components("sdxl"), _models(tiny_components("sdxl"))
    lyco = create_lycoris(ref["unet"], 1.0, linear_dim=4, linear_alpha=2, algo="lora")
    lyco.apply_to()
    _randomise(lyco.named_parameters(), std=0.2)
    path = tmp_path / "xl.safetensors"
    lyco.save_weights(str(path), None, {})
    net, report = load_adapter(path, ours, "sdxl")
    assert report.ok and report.total_matched == len(lyco.loras) == len(_file_modules(path))
    _assert_same_outputs(_outputs(ours, "sdxl"), _outputs(_models(ref), "sdxl"), "sdxl", ["unet"])


def _peft_pipeline(family: str, dora: bool = False, seed: int = 0):
    """A tiny pipeline with PEFT LoRA on its UNet (incl. convs) and text encoders, r=4, lora_alpha=2, random."""
    from peft import LoraConfig

    pipe = tiny_pipeline(family)
    torch.manual_seed(seed)
    # per-module rank and alpha too (PEFT's rank_pattern / alpha_pattern)
    unet_patterns = {} if dora else {"alpha_pattern": {"proj_in": 8.0}, "rank_pattern": {"conv1": 2}}
    te_patterns = {} if dora else {"alpha_pattern": {"fc2": 1.0}}
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=PEFT_UNET_TARGETS, init_lora_weights=False,
                                     use_dora=dora, **unet_patterns))
    for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if te is not None:
            _add_te_adapter(te, LoraConfig(r=4, lora_alpha=2, target_modules=PEFT_TE_TARGETS,
                                           init_lora_weights=False, use_dora=dora, **te_patterns))
    if dora:  # magnitudes start at the norms of W + ΔW; move them so they matter
        _randomise([(n, p) for n, p in pipe.unet.named_parameters() if "lora_magnitude_vector" in n], seed)
    return pipe


def _add_te_adapter(te, config) -> None:
    """PEFT LoRA on a transformers text encoder, as ``te.add_adapter(config)`` does, through peft itself:
    transformers 5.24's add_adapter refuses peft < 0.22 (not released when this was written), while the
    layers peft injects are the same either way."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, te, adapter_name="default")
    te.peft_config = {"default": config}  # what add_adapter records; get_peft_model_state_dict reads it


def _save_peft(pipe, folder) -> str:
    from peft import get_peft_model_state_dict

    kw = {}
    for name in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            kw[f"{name}_lora_layers"] = get_peft_model_state_dict(model)
            kw[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
    type(pipe).save_lora_weights(str(folder), **kw)
    return str(folder / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("family,dora", [("sd1", False), ("sd1", True), ("sdxl", False)])
def test_peft_diffusers_files_load_in_sdlora(tmp_path, family, dora):
    """diffusers' save_lora_weights (PEFT keys, alphas only in its lora_adapter_metadata), then diffusers'
    kohya export of the same tensors; every key used, outputs as the reference applies them."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    ref = _peft_pipeline(family, dora)
    path = _save_peft(ref, tmp_path)
    meta = json.loads(files.read_metadata(path)["lora_adapter_metadata"])
    assert (meta["unet.r"], meta["unet.lora_alpha"], meta["text_encoder.lora_alpha"]) == (4, 2, 2)
    ours_pipe = tiny_pipeline(family)
    ours = _models(ours_pipe)
    net, report = load_adapter(path, ours, family)
    assert report.ok, report.summary()
    assert report.matched == _peft_layers(_models(ref))
    assert report.total_matched == len(AdapterFile.read(path).modules)
    _assert_same_outputs(_outputs(ours, family), _outputs(_models(ref), family), family)
    net.detach()
    if dora:
        return  # diffusers' kohya export does not rename lora_magnitude_vector keys

    kohya = convert_state_dict_to_kohya(load_file(path))
    # the known pitfall: the export writes alpha = rank, whatever lora_alpha was
    alphas = {k: float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas and all(v == kohya[k.replace(".alpha", ".lora_down.weight")].shape[0] for k, v in alphas.items())
    kpath = tmp_path / "kohya.safetensors"
    save_file(kohya, str(kpath))
    their_pipe = tiny_pipeline(family)  # the reference applying the export: diffusers itself
    with _load_reports() as messages:
        their_pipe.load_lora_weights(str(kpath))
    assert _key_problems(messages) == []
    net, report = load_adapter(kpath, ours, family)
    assert report.ok and report.total_matched == len(_file_modules(kpath)) == len(alphas)
    _assert_same_outputs(_outputs(ours, family), _outputs(_models(their_pipe), family), family)


def _old_forms(pipe, form: str, bare_unet: bool = False) -> dict[str, torch.Tensor]:
    """The PEFT adapters of ``pipe`` in diffusers' old key forms. Those carry no alpha (alpha = rank), so each
    module's PEFT scaling is folded into its up weight."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    for prefix, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for path, layer in model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            down = layer.lora_A["default"].weight.detach().clone()
            up = layer.lora_B["default"].weight.detach() * layer.scaling["default"]
            if prefix == "text_encoder":
                name = f"text_encoder.text_model.{path}"  # transformers 4 paths, as those files have them
            else:
                name = path if bare_unet else f"unet.{path}"
            attn = re.match(r"(.*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)$", name)
            te_attn = re.match(r"(.*\.self_attn)\.(q|k|v|out)_proj$", name)
            if form == "processor" and attn:
                keys = [f"{attn[1]}.processor.{attn[2].replace('.0', '')}_lora.{s}.weight" for s in ("down", "up")]
            elif form == "processor" and te_attn:
                keys = [f"{te_attn[1]}.to_{te_attn[2]}_lora.{s}.weight" for s in ("down", "up")]
            elif form == "lora_linear_layer" and prefix == "text_encoder":
                keys = [f"{name}.lora_linear_layer.{s}.weight" for s in ("down", "up")]
            else:
                keys = [f"{name}.lora.{s}.weight" for s in ("down", "up")]
            out[keys[0]], out[keys[1]] = down, up
    return out


def test_old_diffusers_forms_load_in_sdlora(tmp_path):
    ref = _peft_pipeline("sd1")
    want = _outputs(_models(ref), "sd1")
    n_modules = sum(_peft_layers(_models(ref)).values())
    ours = _models(tiny_components("sd1"))
    for form, bare in (("lora", False), ("lora_linear_layer", False), ("processor", False), ("processor", True)):
        tensors = _old_forms(ref, form, bare)
        assert len(tensors) == 2 * n_modules
        if form == "processor":
            assert any(".processor.to_out_lora.up.weight" in k for k in tensors)
            assert any(".self_attn.to_q_lora.down.weight" in k for k in tensors)
        path = tmp_path / f"{form}_{bare}.safetensors"
        save_file(tensors, str(path))
        net, report = load_adapter(path, ours, "sd1")
        assert report.ok, (form, report.summary())
        assert report.total_matched == n_modules
        _assert_same_outputs(_outputs(ours, "sd1"), want, "sd1")
        net.detach()


# ------------------------------------------------------------------------------------------- 4. round trip
FIXED_META = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2",
              "ss_output_name": "roundtrip", "modelspec.title": "roundtrip", "modelspec.date": "2024-01-01T00:00:00",
              "sdlora_version": "test"}


@pytest.mark.parametrize("family,cfg,dialect", [
    ("sd1", {"algo": "lora", "preset": "full"}, "kohya"),
    ("sd1", {"algo": "loha", "preset": "full", "dora": True, "tucker": True}, "kohya"),
    ("sd1", {"algo": "lokr", "preset": "full", "rank": 2, "alpha": 1, "decompose_both": True}, "kohya"),
    ("sdxl", {"algo": "lora", "preset": "full", "tucker": True, "conv_rank": 2, "conv_alpha": 1}, "kohya"),
    ("sdxl", {"algo": "lora", "preset": "full"}, "peft"),
])
def test_round_trip_is_identity(tmp_path, family, cfg, dialect):
    net = _network(_models(tiny_components(family)), **cfg)
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    meta1 = save_adapter(net, first, family, dialect=dialect, metadata=FIXED_META)
    loaded, report = load_adapter(first, _models(tiny_components(family)), family, attach=False)
    assert report.ok and report.total_matched == len(net)
    meta2 = save_adapter(loaded, second, family, dialect=dialect, metadata=FIXED_META)
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert meta1 == meta2 == files.read_metadata(first) == files.read_metadata(second)
    # same layout and data bytes (safetensors writes the header's JSON keys in no fixed order)
    h1, n1 = files.read_header(first)
    h2, n2 = files.read_header(second)
    assert h1 == h2
    assert first.read_bytes()[8 + n1:] == second.read_bytes()[8 + n2:]
    # default metadata: the same apart from the date
    d1 = save_adapter(loaded, tmp_path / "d1.safetensors", family, dialect=dialect)
    d2 = save_adapter(loaded, tmp_path / "d2.safetensors", family, dialect=dialect)
    d1.pop("modelspec.date", None), d2.pop("modelspec.date", None)
    if dialect == "kohya":  # named by the file's stem (issue 18)
        assert (d1.pop("ss_output_name"), d2.pop("ss_output_name")) == ("d1", "d2")
        d1.pop("modelspec.title"), d2.pop("modelspec.title")
    assert d1 == d2


# ---------------------------------------------------------------------------------------- 5. PEFT export
@pytest.mark.parametrize("family,algo", [("sd1", "lora"), ("sd1", "locon"), ("sdxl", "locon")])
def test_peft_export_loads_in_diffusers_with_real_alpha(tmp_path, family, algo):
    ours_pipe, their_pipe = tiny_pipeline(family), tiny_pipeline(family)
    ours = _models(ours_pipe)
    net = _network(ours, preset=PRESETS[algo], rank=4, alpha=2)
    path = tmp_path / "peft.safetensors"
    meta = save_adapter(net, path, family, dialect="peft")
    packed = json.loads(meta["lora_adapter_metadata"])
    assert packed["unet.r"] == 4 and packed["unet.lora_alpha"] == 2.0
    assert all(k.split(".")[0] in ("unet", "text_encoder", "text_encoder_2") for k in load_file(str(path)))
    net.attach()
    with _load_reports() as messages:
        their_pipe.load_lora_weights(str(path))
    assert _key_problems(messages) == []
    theirs = _models(their_pipe)
    assert _peft_layers(theirs) == _counts(net)
    _assert_same_outputs(_outputs(theirs, family), _outputs(ours, family), family)


def test_peft_export_dora_unet_loads_in_diffusers(tmp_path):
    """DoRA magnitudes in PEFT's shapes ((out,) Linear, (1, out, 1, 1) conv). UNet only: diffusers 0.42 with
    transformers 5 cannot load DoRA text-encoder LoRA, not even from its own save_lora_weights."""
    ours_pipe, their_pipe = tiny_pipeline("sd1"), tiny_pipeline("sd1")
    ours = _models(ours_pipe)
    net = _network(ours, preset="full", dora=True, components=("unet",))
    path = tmp_path / "dora.safetensors"
    save_adapter(net, path, "sd1", dialect="peft")
    shapes = {tuple(v.shape) for k, v in load_file(str(path)).items() if k.endswith("lora_magnitude_vector")}
    assert (1, 32, 1, 1) in shapes and (32,) in shapes
    net.attach()
    with _load_reports() as messages:
        their_pipe.load_lora_weights(str(path))
    # a UNet-only file: diffusers says it found no text encoder keys, and nothing else
    assert [m for m in _key_problems(messages) if not m.startswith("No LoRA keys associated to CLIPTextModel")] == []
    theirs = _models(their_pipe)
    assert _peft_layers(theirs) == _counts(net)
    _assert_same_outputs(_outputs(theirs, "sd1"), _outputs(ours, "sd1"), "sd1", ["unet"])
    # and back into sdlora
    again, report = load_adapter(path, _models(tiny_components("sd1")), "sd1", attach=False)
    assert report.ok and report.total_matched == len(net)
    mine = {(c, p): m for c, p, m in net.items_by_module()}
    for c, p, m in again.items_by_module():
        assert torch.equal(m.dora_scale, mine[(c, p)].dora_scale) and float(m.alpha) == 2.0


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_peft_export_refuses_loha_lokr(tmp_path, algo):
    net = _network(_models(tiny_components("sd1")), algo=algo, preset="attn-mlp", rank=2, alpha=1)
    path = tmp_path / "x.safetensors"
    with pytest.raises(AdapterFileError) as info:
        save_adapter(net, path, "sd1", dialect="peft")
    msg = str(info.value)
    assert f"the diffusers/PEFT format holds plain LoRA/LoCon only, not {algo}" in msg
    assert "save it in the kohya format" in msg
    assert not path.exists() and list(tmp_path.iterdir()) == []
