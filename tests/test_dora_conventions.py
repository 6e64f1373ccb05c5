"""DoRA per client (issue 18, 2): sdlora's own strength rule is what its modules compute (merge and bypass),
the three documented rules (``sdlora.adapters.clients.dora_weight``) are checked against their formulas written
out here, and where the clients agree or part is shown with numbers: a column-shaped magnitude gives the same
W' in sdlora and A1111 at strength 1, a row-shaped one does not (A1111 broadcasts it on the wrong axis), and
the interpolation rule of ComfyUI/A1111 parts from sdlora's at strength 0.8."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sdlora import keys
from sdlora.adapters import module_from_file_tensors
from sdlora.adapters.clients import DORA_RULES, dora_weight


def _case(seed=0, out=6, inp=5, rank=2, column=False):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(inp, out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, inp, generator=g))
    down, up = torch.randn(rank, inp, generator=g) * 0.3, torch.randn(out, rank, generator=g) * 0.3
    wd = layer.weight.detach() + up @ down  # alpha = rank: scale 1
    base = wd.norm(dim=0, keepdim=True) if column else wd.norm(dim=1, keepdim=True)
    mag = base * (1 + 0.2 * torch.rand(base.shape, generator=g))
    tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(rank)), "dora_scale": mag}
    return layer, module_from_file_tensors(layer, tensors), up @ down, mag


@pytest.mark.parametrize("column", [False, True])
@pytest.mark.parametrize("s", [1.0, 0.8, 0.3])
def test_sdlora_rule_is_what_its_modules_compute(column, s):
    layer, module, dw, mag = _case(column=column)
    w = layer.weight.detach()
    wd = w + dw
    norm = wd.norm(dim=0, keepdim=True) if column else wd.norm(dim=1, keepdim=True)
    formula = wd * (s * (mag / norm - 1) + 1)  # sdlora's rule, written out
    assert torch.allclose(dora_weight(w, dw, mag, s, "sdlora"), formula, atol=1e-6)
    assert torch.allclose(module.merged_weight(w, s), formula, atol=1e-5)
    module.multiplier = s
    module.attach()
    x = torch.randn(3, w.shape[1])
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ formula.T + layer.bias, atol=1e-5)


def test_client_rules_match_their_formulas():
    layer, _, dw, mag = _case()
    w = layer.weight.detach()
    wd = w + dw
    comfy = w + 0.8 * (wd * mag / w.norm(dim=1, keepdim=True) - w)  # ComfyUI: the norm of the original W
    assert torch.allclose(dora_weight(w, dw, mag, 0.8, "comfyui"), comfy, atol=1e-6)
    a1111 = w + 0.8 * (wd * mag / wd.norm(dim=0, keepdim=True) - w)  # A1111: column norms, m broadcast as given
    assert torch.allclose(dora_weight(w, dw, mag, 0.8, "a1111"), a1111, atol=1e-6)
    with pytest.raises(ValueError, match="unknown DoRA rule"):
        dora_weight(w, dw, mag, 1.0, "forge")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_where_the_clients_agree_and_part():
    layer, _, dw, row = _case()
    w = layer.weight.detach()
    ours = dora_weight(w, dw, row, 1.0, "sdlora")
    assert _rel(dora_weight(w, dw, row, 1.0, "a1111"), ours) > 0.05  # a row-shaped m in A1111: wrong axis
    assert _rel(dora_weight(w, dw, row, 1.0, "comfyui"), ours) > 0.01  # ‖W‖ instead of ‖W + ΔW‖
    layer, _, dw, col = _case(column=True)
    w = layer.weight.detach()
    ours = dora_weight(w, dw, col, 1.0, "sdlora")
    assert _rel(dora_weight(w, dw, col, 1.0, "a1111"), ours) < 1e-6  # column-shaped m: A1111 reads it right
    assert _rel(dora_weight(w, dw, col, 1.0, "comfyui"), ours) < 1e-6
    apart = _rel(dora_weight(w, dw, col, 0.8, "a1111"), dora_weight(w, dw, col, 0.8, "sdlora"))
    assert apart > 1e-3  # strength: interpolation W + s·(DoRA − W) vs sdlora's scaled magnitude
    assert "sdlora W' = W_d·(s·(m/‖W_d‖ − 1) + 1)" in DORA_RULES


def test_convert_dora_columns_for_a1111(tmp_path):
    """convert --dora-columns: every magnitude becomes column-shaped (1, in[, 1, 1]); A1111's rule on the new file
    comes far closer to sdlora's W' on the original than A1111's rule on the original (row-shaped) does; the fit
    the report prints is the one measured here; sdlora reads the new file as A1111 does at strength 1."""
    from safetensors.torch import load_file

    from sdlora.adapters import AdapterFile, load_adapter, save_adapter
    from sdlora.errors import ConfigError
    from sdlora.networks import Network, NetworkConfig
    from sdlora.tools.convert import convert
    from tiny import tiny_components

    c = tiny_components("sd1")
    models = {"unet": c["unet"], "te1": c["text_encoder"]}
    net = Network.create(models, NetworkConfig(algo="lora", rank=4, alpha=4, preset="attn-mlp", dora=True))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(p * (1 + 0.1 * torch.randn(p.shape, generator=g)) if "dora" in name else
                    torch.randn(p.shape, generator=g) * 0.2)
    src, out = tmp_path / "row.safetensors", tmp_path / "col.safetensors"
    save_adapter(net, src, "sd1")
    with pytest.raises(ConfigError, match="needs the base model"):
        convert(src, out, to="kohya", dora_columns=True, family="sd1")
    report = convert(src, out, to="kohya", model=models, dora_columns=True)
    before, after = AdapterFile.read(src), AdapterFile.read(out)
    worst_row, worst_col = 0.0, 0.0
    table = {keys.kohya_name(comp, path, "sd1"): (comp, path) for comp, path, _ in net.items_by_module()}
    for name, t in after.modules.items():
        comp, path = table[name]
        w = models[comp].get_submodule(path).weight.detach()
        dw = (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1)).reshape(w.shape)
        assert t["dora_scale"].shape == (1, w.shape[1], *[1] * (w.dim() - 2))
        row = before.modules[name]["dora_scale"]
        ours = dora_weight(w, dw, row, 1.0, "sdlora")
        worst_row = max(worst_row, _rel(dora_weight(w, dw, row, 1.0, "a1111"), ours))
        worst_col = max(worst_col, _rel(dora_weight(w, dw, t["dora_scale"], 1.0, "a1111"), ours))
    assert worst_col < worst_row / 3, (worst_col, worst_row)  # measured: 0.29 vs 1.16 (row magnitudes ±10%)
    assert any(f"within {worst_col:.2%}" in n for n in report.notes), report.notes
    fresh = tiny_components("sd1")
    loaded, rep = load_adapter(out, {"unet": fresh["unet"], "te1": fresh["text_encoder"]}, "sd1")
    assert rep.ok
    for comp, path, module in loaded.items_by_module():
        w = module.base.weight.detach()
        name = keys.kohya_name(comp, path, "sd1")
        t = after.modules[name]
        dw = (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1)).reshape(w.shape)
        assert torch.allclose(module.merged_weight(w, 1.0), dora_weight(w, dw, t["dora_scale"], 1.0, "a1111"), atol=1e-5)
