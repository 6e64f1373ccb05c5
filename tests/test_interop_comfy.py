"""Files in the dialects ComfyUI's key map accepts, each built here (no downloads), read by sdlora and compared
numerically with the rule ComfyUI applies them by (W' = W + s·(alpha/rank)·up@down, W' = W + diff,
b' = b + diff_b), written in the test on a fresh copy of the tiny model.

- ComfyUI's own files: `diffusion_model.` + the UNet's LDM path (the names are checked against diffusers' own
  LDM -> diffusers checkpoint converter, not taken from sdlora), `.diff` / `.diff_b`, text encoders under
  `text_encoders.clip_l|clip_h|clip_g.transformer.text_model.` (and without `text_encoders.`); SD1/SD2/SDXL.
- `lora_unet_` names with `.lora_A` / `.lora_B` suffixes, `base_model.model.` (a PEFT-wrapped UNet's own
  save), `lycoris_` names, OneTrainer's SDXL output (kohya prefixes with diffusers UNet paths), SimpleTuner's
  (diffusers/PEFT `unet.` / `text_encoder.` names with lora_A/lora_B) and InvokeAI's (kohya SD1 names).
- `sdlora convert --to comfy` writes ComfyUI's names; the written file reads back with equal tensors.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import load_file, save_file

from sdlora import keys
from sdlora.adapters import load_adapter, save_adapter
from sdlora.networks import Network, NetworkConfig
from sdlora.tools.convert import convert
from tiny import tiny_components

CLIP = {"sd1": {"te1": "clip_l"}, "sd2": {"te1": "clip_h"}, "sdxl": {"te1": "clip_l", "te2": "clip_g"}}
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models(family: str) -> dict[str, nn.Module]:
    c = tiny_components(family)
    out = {"unet": c["unet"], "te1": c["text_encoder"]}
    if "text_encoder_2" in c:
        out["te2"] = c["text_encoder_2"]
    return out


@functools.lru_cache(maxsize=None)
def _ldm_names(family: str) -> dict[str, str]:
    """diffusers UNet module path -> LDM path, confirmed by diffusers' converter: every UNet tensor is put in an
    LDM checkpoint under its candidate LDM key; the converter must bring each back to its diffusers key."""
    unet = _models(family)["unet"]
    state = unet.state_dict()
    ckpt, origin = {}, {}
    for i, (key, value) in enumerate(state.items()):
        module, _, leaf = key.rpartition(".")
        ldm = keys.unet_sgm_path(module, unet.config)
        if ldm is None:
            continue
        ckpt[f"model.diffusion_model.{ldm}.{leaf}"] = torch.full(value.shape, float(i))
        origin[float(i)] = (module, ldm)
    converted = convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    names = {}
    for key, value in converted.items():
        module, ldm = origin[float(value.flatten()[0])]
        assert key.rpartition(".")[0] == module, (key, ldm)
        names[module] = ldm
    return names


def _network(models, seed=0, **cfg) -> Network:
    net = Network.create(models, NetworkConfig(**{"algo": "lora", "rank": 4, "alpha": 2, "preset": "full", **cfg}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def _te_path(path: str) -> str:
    return path.removeprefix("text_model.")


def _comfy_name(family: str, component: str, path: str, bare_te: bool = False) -> str:
    if component == "unet":
        return "diffusion_model." + _ldm_names(family)[path]
    prefix = "" if bare_te else "text_encoders."
    return f"{prefix}{CLIP[family][component]}.transformer.text_model.{_te_path(path)}"


def _lora_tensors(net: Network):
    for component, path, module in net.items_by_module():
        s = module.state_dict()
        yield component, path, s["lora_down.weight"], s["lora_up.weight"], s["alpha"]


def _apply_comfy_rule(models, net: Network, biases: dict, diffs: dict, strength: float = 1.0) -> None:
    """ComfyUI's rule, written here: W += s·(alpha/r)·(up.flatten(1) @ down.flatten(1)); b += s·diff_b; W += s·diff."""
    with torch.no_grad():
        for component, path, down, up, alpha in _lora_tensors(net):
            if (component, path) in diffs:
                continue
            layer = models[component].get_submodule(path)
            dw = (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape)
            layer.weight += strength * float(alpha) / down.shape[0] * dw
        for (component, path), diff in diffs.items():
            models[component].get_submodule(path).weight += strength * diff
        for (component, path), b in biases.items():
            models[component].get_submodule(path).bias += strength * b


def _probe(family):
    g = torch.Generator().manual_seed(3)
    ctx = torch.randn(1, 77, 64 if family == "sdxl" else 32, generator=g)
    added = None
    if family == "sdxl":
        added = {"text_embeds": torch.randn(1, 32, generator=g),
                 "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]])}
    return torch.randint(0, 500, (1, 77), generator=g), torch.randn(1, 4, 16, 16, generator=g), ctx, added


@torch.no_grad()
def _outputs(models, family):
    ids, x, ctx, added = _probe(family)
    out = {c: models[c](ids).last_hidden_state for c in ("te1", "te2") if c in models}
    out["unet"] = models["unet"](x, torch.tensor([10]), ctx, added_cond_kwargs=added).sample
    return out


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _assert_matches(path, family, net, biases=None, diffs=None, strength=1.0):
    """sdlora's load of ``path`` (strict: every key used) gives the outputs of ComfyUI's rule."""
    ours, want, base = _models(family), _models(family), _outputs(_models(family), family)
    _, report = load_adapter(path, ours, family, multiplier=strength)
    assert report.ok, report.summary()
    _apply_comfy_rule(want, net, biases or {}, diffs or {}, strength)
    got, expected = _outputs(ours, family), _outputs(want, family)
    for c in expected:
        assert _rel(got[c], expected[c]) <= RTOL, (c, _rel(got[c], expected[c]))
        assert _rel(expected[c], base[c]) >= 1e-3, f"{c}: the file has no visible effect"
    return report


# ------------------------------------------------------------------------------------------ ComfyUI's own
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("bare_te", [False, True])
def test_comfy_written_file_loads(tmp_path, family, bare_te):
    """LoRA under diffusion_model. + LDM names, bias deltas as .diff_b, one full .diff, text encoders under
    ComfyUI's CLIP prefixes: every key used, outputs equal to ComfyUI's rule (strength 0.7)."""
    models = _models(family)
    net = _network(models, preset="attn-mlp")
    g = torch.Generator().manual_seed(5)
    tensors, biases, diffs = {}, {}, {}
    for i, (component, path, down, up, alpha) in enumerate(_lora_tensors(net)):
        name = _comfy_name(family, component, path, bare_te)
        layer = models[component].get_submodule(path)
        if i == 0:  # ComfyUI writes a full difference where it does not factor one
            diffs[(component, path)] = torch.randn(layer.weight.shape, generator=g) * 0.05
            tensors[f"{name}.diff"] = diffs[(component, path)]
            continue
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": alpha})
        if i % 3 == 0 and layer.bias is not None:
            biases[(component, path)] = torch.randn(layer.bias.shape, generator=g) * 0.05
            tensors[f"{name}.diff_b"] = biases[(component, path)]
    assert biases and diffs
    path = tmp_path / "comfy.safetensors"
    save_file(tensors, str(path))
    report = _assert_matches(path, family, net, biases, diffs, strength=0.7)
    assert set(report.matched) == set(models)


# --------------------------------------------------------------------------------- other accepted dialects
def _renamed_file(tmp_path, net, family, name_of, suffixes=("lora_down.weight", "lora_up.weight")):
    tensors = {}
    for component, path, down, up, alpha in _lora_tensors(net):
        name = name_of(component, path)
        tensors[f"{name}.{suffixes[0]}"] = down
        tensors[f"{name}.{suffixes[1]}"] = up
        tensors[f"{name}.alpha"] = alpha
    out = tmp_path / "file.safetensors"
    save_file(tensors, str(out))
    return out


def test_kohya_names_with_lora_a_b(tmp_path):
    models = _models("sd1")
    net = _network(models)
    kohya = {(c, p): keys.kohya_name(c, p, "sd1", models["unet"].config) for c, p, _ in net.items_by_module()}
    path = _renamed_file(tmp_path, net, "sd1", lambda c, p: kohya[(c, p)], ("lora_A.weight", "lora_B.weight"))
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_A.weight") for k in load_file(str(path)))
    _assert_matches(path, "sd1", net)


def test_peft_wrapped_unet_base_model_prefix(tmp_path):
    """PeftModel(unet).save: base_model.model.<diffusers path>.lora_A/B (the text encoder as base_model.model.
    text_model.… where it is the only one)."""
    models = _models("sd1")
    net = _network(models, preset="attn-mlp")
    path = _renamed_file(tmp_path, net, "sd1",
                         lambda c, p: "base_model.model." + (p if c == "unet" else "text_model." + _te_path(p)),
                         ("lora_A.weight", "lora_B.weight"))
    report = _assert_matches(path, "sd1", net)
    assert set(report.matched) == {"unet", "te1"}


def test_lycoris_names(tmp_path):
    models = _models("sd1")
    net = _network(models)
    path = _renamed_file(tmp_path, net, "sd1", lambda c, p: "lycoris_" + (p if c == "unet" else
                                                                             "text_model." + _te_path(p)).replace(".", "_"))
    _assert_matches(path, "sd1", net)


def test_onetrainer_sdxl(tmp_path):
    """OneTrainer's SDXL LoRA: lora_unet_ + diffusers UNet paths (down_blocks_…), lora_te1_/lora_te2_."""
    models = _models("sdxl")
    net = _network(models, preset="attn-mlp")
    def name(c, p):
        if c == "unet":
            return "lora_unet_" + p.replace(".", "_")
        return {"te1": "lora_te1_", "te2": "lora_te2_"}[c] + ("text_model." + _te_path(p)).replace(".", "_")
    path = _renamed_file(tmp_path, net, "sdxl", name)
    assert any(k.startswith("lora_unet_down_blocks_") for k in load_file(str(path)))
    _assert_matches(path, "sdxl", net)


def test_simpletuner_sdxl(tmp_path):
    """SimpleTuner's SDXL LoRA (diffusers' save_lora_weights names): unet.<path>, text_encoder[_2].text_model.…"""
    models = _models("sdxl")
    net = _network(models, preset="attn-mlp")
    prefix = {"unet": "unet.", "te1": "text_encoder.text_model.", "te2": "text_encoder_2.text_model."}
    path = _renamed_file(tmp_path, net, "sdxl", lambda c, p: prefix[c] + (p if c == "unet" else _te_path(p)),
                         ("lora_A.weight", "lora_B.weight"))
    _assert_matches(path, "sdxl", net)


def test_invokeai_sd1(tmp_path):
    """InvokeAI's LoRA files: kohya SD1 names (lora_unet_down_blocks_…, lora_te_text_model_…)."""
    models = _models("sd1")
    net = _network(models, preset="attn-mlp")
    path = _renamed_file(tmp_path, net, "sd1", lambda c, p: ("lora_unet_" + p if c == "unet" else
                                                               "lora_te_text_model_" + _te_path(p)).replace(".", "_"))
    _assert_matches(path, "sd1", net)


# ------------------------------------------------------------------------------------------ writing comfy
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_convert_to_comfy(tmp_path, family):
    """convert --to comfy: diffusion_model.<LDM path> (diffusers-confirmed) and text_encoders.<clip>.…;
    tensors bit-identical; the written file loads with the same outputs."""
    models = _models(family)
    net = _network(models, preset="full")
    src = tmp_path / "in.safetensors"
    save_adapter(net, src, family)
    out = tmp_path / "comfy.safetensors"
    convert(src, out, to="comfy", model=models)
    written = load_file(str(out))
    want = {}
    for component, path, module in net.items_by_module():
        name = _comfy_name(family, component, path)
        for suffix, value in module.state_dict().items():
            want[f"{name}.{suffix}"] = value
    assert set(written) == set(want)
    for k, v in want.items():
        assert torch.equal(written[k], v.to(written[k].dtype)), k
    _assert_matches(out, family, net)


# ------------------------------------------------------------------- which tools read a file (issue 18, 3)
@pytest.mark.parametrize("cfg,kohya", [
    ({"algo": "lora", "preset": "attn-mlp"}, True),
    ({"algo": "lora", "preset": "full", "conv_rank": 2}, True),
    ({"algo": "lora", "preset": "full", "conv_rank": 2, "tucker": True}, False),
    ({"algo": "lora", "preset": "all"}, False),
    ({"algo": "loha", "preset": "attn-mlp"}, False),
    ({"algo": "lokr", "preset": "attn-mlp"}, False),
])
def test_network_module_and_readers(tmp_path, cfg, kohya):
    """Files kohya's networks.lora cannot hold say lycoris.kohya (A1111/kohya route by it) and inspect names the
    tools that read them; plain LoRA/LoCon says networks.lora. save_adapter names the file by its stem."""
    from sdlora.commands.actions.inspect import inspect_file, render

    path = tmp_path / "my_style.safetensors"
    meta = save_adapter(_network(_models("sd1"), **cfg), path, "sd1")
    assert meta["ss_network_module"] == ("networks.lora" if kohya else "lycoris.kohya")
    assert meta["ss_output_name"] == "my_style"
    info = inspect_file(path)
    assert ("kohya sd-scripts (networks.lora)" in info["readers"][0]) == kohya
    assert ("not in kohya's own networks.lora" in info["readers"][0]) == (not kohya)
    assert "clients      reads in: A1111/Forge, ComfyUI" in render(info)


def test_inspect_flags_a_mislabelled_tucker_file(tmp_path):
    path = tmp_path / "t.safetensors"
    net = _network(_models("sd1"), preset="full", conv_rank=2, tucker=True)
    save_adapter(net, path, "sd1", metadata={"ss_network_module": "networks.lora"})
    from sdlora.commands.actions.inspect import inspect_file

    readers = inspect_file(path)["readers"]
    assert "Tucker LoCon" in readers[0] and "wrong loader" in readers[1]


@pytest.mark.parametrize("algo,preset,note", [("lora", "attn-mlp", False), ("loha", "attn-mlp", True),
                                              ("lora", "all", True)])
def test_train_prints_the_loader_note(tmp_path, capsys, algo, preset, note):
    from sdlora.cli import main
    from trainkit import config, write_toml

    toml = write_toml(tmp_path / "c.toml", config(tmp_path, network={"algo": algo, "rank": 4, "preset": preset}))
    assert main(["train", str(toml), "--check"]) == 0
    out = capsys.readouterr().out
    assert ("sdlora: note: kohya's own LoRA loader (networks.lora) cannot read this network" in out) == note
    assert "config is valid" in out


def test_cli_convert_to_comfy_and_dora_columns_sentence(tmp_path, capsys):
    """The CLI: `convert --to comfy --model DIR` writes ComfyUI's names; `--dora-columns` without --model is one
    error sentence and writes nothing."""
    from sdlora.cli import main
    from trainkit import model_dir

    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_adapter(_network(_models("sd1"), dora=True), src, "sd1")
    assert main(["convert", str(src), "--to", "comfy", "--model", str(model_dir("sd1")), "--out", str(out)]) == 0
    names = {k.split(".")[0] for k in load_file(str(out))}
    assert names <= {"diffusion_model", "text_encoders"} and names == {"diffusion_model", "text_encoders"}
    bad = tmp_path / "bad.safetensors"
    assert main(["convert", str(src), "--to", "kohya", "--dora-columns", "--family", "sd1", "--out", str(bad)]) == 2
    assert "sdlora: error: --dora-columns needs the base model's weights" in capsys.readouterr().err
    assert not bad.exists()
