"""Key names: one table of facts per dialect, round trips on the full-size models, and the diffusers /
LyCORIS packages as oracles."""
from __future__ import annotations

import pytest
import torch
from diffusers import Transformer2DModel

from sdlora.keys import (
    alias_table, kohya_name, normalize_module_path, peft_name, split_key, unet_diffusers_path, unet_sgm_path,
)
from tiny import full_size_text_encoders, full_size_unet, tiny_components

LINEAR_CONV = (torch.nn.Linear, torch.nn.Conv2d)


@pytest.fixture(scope="module")
def sd15_unet():
    return full_size_unet("sd1")


@pytest.fixture(scope="module")
def sdxl_unet():
    return full_size_unet("sdxl")


# (diffusers path, kohya SD1.5 name, kohya SDXL name); None: the module does not exist in that model.
UNET_NAMES = [
    ("conv_in", "lora_unet_conv_in", "lora_unet_input_blocks_0_0"),
    ("time_embedding.linear_1", "lora_unet_time_embedding_linear_1", "lora_unet_time_embed_0"),
    ("time_embedding.linear_2", "lora_unet_time_embedding_linear_2", "lora_unet_time_embed_2"),
    ("add_embedding.linear_1", None, "lora_unet_label_emb_0_0"),
    ("add_embedding.linear_2", None, "lora_unet_label_emb_0_2"),
    ("down_blocks.0.resnets.0.conv1", "lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_input_blocks_1_0_in_layers_2"),
    ("down_blocks.0.resnets.0.time_emb_proj", "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
     "lora_unet_input_blocks_1_0_emb_layers_1"),
    ("down_blocks.0.resnets.1.conv2", "lora_unet_down_blocks_0_resnets_1_conv2", "lora_unet_input_blocks_2_0_out_layers_3"),
    ("down_blocks.1.resnets.0.conv_shortcut", "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
     "lora_unet_input_blocks_4_0_skip_connection"),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", None),
    ("down_blocks.0.attentions.0.proj_in", "lora_unet_down_blocks_0_attentions_0_proj_in", None),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
     "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
     "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2",
     "lora_unet_input_blocks_4_1_transformer_blocks_0_ff_net_2"),
    ("down_blocks.1.attentions.0.proj_in", "lora_unet_down_blocks_1_attentions_0_proj_in", "lora_unet_input_blocks_4_1_proj_in"),
    ("down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_out.0", None,
     "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_out_0"),
    ("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj", None,
     "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_0_proj"),
    ("down_blocks.2.attentions.0.proj_out", "lora_unet_down_blocks_2_attentions_0_proj_out", "lora_unet_input_blocks_7_1_proj_out"),
    ("down_blocks.0.downsamplers.0.conv", "lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_input_blocks_3_0_op"),
    ("down_blocks.1.downsamplers.0.conv", "lora_unet_down_blocks_1_downsamplers_0_conv", "lora_unet_input_blocks_6_0_op"),
    ("mid_block.resnets.0.conv1", "lora_unet_mid_block_resnets_0_conv1", "lora_unet_middle_block_0_in_layers_2"),
    ("mid_block.resnets.1.time_emb_proj", "lora_unet_mid_block_resnets_1_time_emb_proj", "lora_unet_middle_block_2_emb_layers_1"),
    ("mid_block.attentions.0.proj_in", "lora_unet_mid_block_attentions_0_proj_in", "lora_unet_middle_block_1_proj_in"),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.2",
     "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2",
     "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2"),
    ("up_blocks.0.resnets.0.conv1", "lora_unet_up_blocks_0_resnets_0_conv1", "lora_unet_output_blocks_0_0_in_layers_2"),
    ("up_blocks.0.resnets.2.conv_shortcut", "lora_unet_up_blocks_0_resnets_2_conv_shortcut",
     "lora_unet_output_blocks_2_0_skip_connection"),
    ("up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", None,
     "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k"),
    ("up_blocks.0.upsamplers.0.conv", "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_2_2_conv"),
    ("up_blocks.1.upsamplers.0.conv", "lora_unet_up_blocks_1_upsamplers_0_conv", "lora_unet_output_blocks_5_2_conv"),
    ("up_blocks.2.resnets.2.conv2", "lora_unet_up_blocks_2_resnets_2_conv2", "lora_unet_output_blocks_8_0_out_layers_3"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_v",
     "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_v", None),
    ("conv_out", "lora_unet_conv_out", "lora_unet_out_2"),
]

# SD 1.5 in the original (LDM) layout: the SGM names of an SD1 checkpoint.
SD15_SGM = [
    ("down_blocks.0.attentions.0.proj_in", "input_blocks.1.1.proj_in"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.3.resnets.1.conv2", "input_blocks.11.0.out_layers.3"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),  # UpBlock2D: no attention before it
    ("up_blocks.1.attentions.2.proj_out", "output_blocks.5.1.proj_out"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v", "output_blocks.11.1.transformer_blocks.0.attn2.to_v"),
    ("conv_norm_out", "out.0"),
    ("down_blocks.0.resnets.0.nonlinearity", None),
    ("down_blocks.0", None),
    ("time_proj", None),
]

# (component, path as found in the model, kohya SD1 name, kohya SDXL name, PEFT name)
TE_NAMES = [
    ("te1", "encoder.layers.0.self_attn.q_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
     "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"),
    ("te1", "text_model.encoder.layers.11.mlp.fc2", "lora_te_text_model_encoder_layers_11_mlp_fc2",
     "lora_te1_text_model_encoder_layers_11_mlp_fc2", "text_encoder.text_model.encoder.layers.11.mlp.fc2"),
    ("te2", "text_model.encoder.layers.31.self_attn.out_proj", None,
     "lora_te2_text_model_encoder_layers_31_self_attn_out_proj",
     "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj"),
    ("te2", "encoder.layers.0.mlp.fc1", None, "lora_te2_text_model_encoder_layers_0_mlp_fc1",
     "text_encoder_2.text_model.encoder.layers.0.mlp.fc1"),
    ("te2", "text_projection", None, "lora_te2_text_projection", "text_encoder_2.text_projection"),
]


@pytest.mark.parametrize("path, sd1, sdxl", UNET_NAMES)
def test_unet_kohya_names(path, sd1, sdxl, sd15_unet, sdxl_unet):
    for unet, family, expected in ((sd15_unet, "sd1", sd1), (sdxl_unet, "sdxl", sdxl)):
        modules = dict(unet.named_modules())
        if expected is None:
            assert path not in modules, f"{path} exists in the {family} UNet: fill in its name"
            continue
        assert isinstance(modules[path], LINEAR_CONV)
        assert kohya_name("unet", path, family, unet.config) == expected
        sgm = unet_sgm_path(path, unet.config)
        assert unet_diffusers_path(sgm, unet.config) == path
    assert kohya_name("unet", path, "sd2") == "lora_unet_" + path.replace(".", "_")
    assert peft_name("unet", path) == "unet." + path


@pytest.mark.parametrize("path, sgm", SD15_SGM)
def test_sd15_sgm_paths(path, sgm, sd15_unet):
    assert path in dict(sd15_unet.named_modules())
    assert unet_sgm_path(path, sd15_unet.config) == sgm
    if sgm is not None:
        assert unet_diffusers_path(sgm, sd15_unet.config) == path


@pytest.mark.parametrize("component, path, sd1, sdxl, peft", TE_NAMES)
def test_text_encoder_names(component, path, sd1, sdxl, peft):
    canonical = normalize_module_path(component, path)
    assert not canonical.startswith("text_model")
    if sd1 is not None:
        assert kohya_name(component, path, "sd1") == sd1 == kohya_name(component, canonical, "sd2")
    else:
        with pytest.raises(ValueError, match="second text encoder"):
            kohya_name(component, path, "sd1")
    assert kohya_name(component, path, "sdxl") == sdxl
    assert peft_name(component, path) == peft


def test_text_encoder_paths_exist():
    te1, te2 = full_size_text_encoders("sdxl")
    assert "encoder.layers.0.self_attn.q_proj" in dict(te1.named_modules())  # transformers 5: no text_model
    te2_paths = {normalize_module_path("te2", n) for n, _ in te2.named_modules()}
    assert {"encoder.layers.31.self_attn.out_proj", "text_projection"} <= te2_paths


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_sgm_round_trip_every_module(family, sd15_unet, sdxl_unet):
    unet = sd15_unet if family == "sd1" else sdxl_unet
    seen: dict[str, str] = {}
    for path, module in unet.named_modules():
        sgm = unet_sgm_path(path, unet.config)
        if isinstance(module, LINEAR_CONV):
            assert sgm is not None, path
        if sgm is None:
            continue
        assert sgm not in seen, f"{path} and {seen[sgm]} both map to {sgm}"
        seen[sgm] = path
        assert unet_diffusers_path(sgm, unet.config) == path
    names = [kohya_name("unet", p, "sdxl", unet.config) for p, m in unet.named_modules() if isinstance(m, LINEAR_CONV)]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_sgm_paths_match_diffusers_checkpoint_converter(family, sd15_unet, sdxl_unet):
    """diffusers' own LDM -> diffusers UNet converter is the oracle: a state dict keyed by our SGM names
    must come back under the diffusers names, every tensor in its place."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = sd15_unet if family == "sd1" else sdxl_unet
    ldm, tags = {}, {}
    for i, name in enumerate(unet.state_dict()):
        module, param = name.rsplit(".", 1)
        ldm[f"model.diffusion_model.{unet_sgm_path(module, unet.config)}.{param}"] = torch.tensor(float(i))
        tags[name] = float(i)
    converted = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(converted) == set(tags)
    assert all(converted[k].item() == v for k, v in tags.items())


def test_kohya_coverage_counts(sdxl_unet, sd15_unet):
    """kohya's LoRA covers the Linear/Conv2d modules inside Transformer2DModel blocks and the CLIP
    attention/MLP projections: SD1.5 192 + 72, SDXL 722 + 264."""
    def unet_names(unet, family):
        return {kohya_name("unet", f"{b}.{n}", family, unet.config)
                for b, block in unet.named_modules() if isinstance(block, Transformer2DModel)
                for n, m in block.named_modules() if isinstance(m, LINEAR_CONV)}

    def te_names(family):
        names = set()
        for component, te in zip(("te1", "te2"), full_size_text_encoders(family)):
            for n, m in te.named_modules():
                if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
                    names.add(kohya_name(component, n, family))
        return names

    assert len(unet_names(sd15_unet, "sd1")) == 192 and len(te_names("sd1")) == 72
    xl = unet_names(sdxl_unet, "sdxl")
    assert len(xl) == 722 and all(n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_1_",
                                                 "lora_unet_output_blocks_")) for n in xl)
    te = te_names("sdxl")
    assert len(te) == 264 and sum(n.startswith("lora_te2_text_model_encoder_layers_") for n in te) == 192


def _linear_conv_paths(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, LINEAR_CONV)]


def test_alias_table_sdxl(sdxl_unet):
    te1, te2 = full_size_text_encoders("sdxl")
    modules = {"unet": _linear_conv_paths(sdxl_unet), "te1": _linear_conv_paths(te1), "te2": _linear_conv_paths(te2)}
    table = alias_table(modules, "sdxl", sdxl_unet.config)
    q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    for alias in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "lycoris_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        f"unet.{q}",
    ):
        assert table[alias] == ("unet", q), alias
    fc1 = ("te1", "encoder.layers.3.mlp.fc1")
    for alias in ("lora_te1_text_model_encoder_layers_3_mlp_fc1", "lora_te_text_model_encoder_layers_3_mlp_fc1",
                  "lora_te1_encoder_layers_3_mlp_fc1", "lora_te_encoder_layers_3_mlp_fc1",
                  "text_encoder.text_model.encoder.layers.3.mlp.fc1", "text_encoder.encoder.layers.3.mlp.fc1"):
        assert table[alias] == fc1, alias
    q2 = ("te2", "encoder.layers.31.self_attn.q_proj")
    for alias in ("lora_te2_text_model_encoder_layers_31_self_attn_q_proj", "lora_te2_encoder_layers_31_self_attn_q_proj",
                  "text_encoder_2.text_model.encoder.layers.31.self_attn.q_proj",
                  "text_encoder_2.encoder.layers.31.self_attn.q_proj"):
        assert table[alias] == q2, alias
    assert not any(a.startswith("lycoris_encoder") or a.startswith("lycoris_text_model") for a in table)
    # every module is reachable from its written names
    targets = set(table.values())
    assert len(targets) == sum(len(v) for v in modules.values())
    for component, paths in modules.items():
        for p in paths:
            name = kohya_name(component, p, "sdxl", sdxl_unet.config)
            assert table[name] == (component, normalize_module_path(component, p))
            assert table[peft_name(component, p)] == (component, normalize_module_path(component, p))


def test_alias_table_sd1_lycoris_text_encoder(sd1):
    modules = {"unet": _linear_conv_paths(sd1["unet"]), "te1": _linear_conv_paths(sd1["text_encoder"])}
    table = alias_table(modules, "sd1", sd1["unet"].config)
    assert table["lycoris_text_model_encoder_layers_1_self_attn_v_proj"] == ("te1", "encoder.layers.1.self_attn.v_proj")
    assert table["lycoris_encoder_layers_1_self_attn_v_proj"] == ("te1", "encoder.layers.1.self_attn.v_proj")
    assert table["lora_unet_input_blocks_1_1_proj_in"] == ("unet", "down_blocks.0.attentions.0.proj_in")


def test_lycoris_names_match_the_lycoris_package(sd1, sdxl):
    """LyCORIS 4.x names a module "lycoris_" + its named_modules() path with "." -> "_"."""
    from lycoris import create_lycoris

    for parts, family in ((sd1, "sd1"), (sdxl, "sdxl")):
        unet = parts["unet"]
        network = create_lycoris(unet, 1.0, linear_dim=2, linear_alpha=1, algo="lora")
        table = alias_table({"unet": [n for n, _ in unet.named_modules() if n]}, family, unet.config)
        names = [lora.lora_name for lora in network.loras]
        assert names and all(table[n][0] == "unet" for n in names)
        for lora in network.loras:
            path = table[lora.lora_name][1]
            assert dict(unet.named_modules())[path] is lora.org_module[0]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("dialect", ["kohya", "peft"])
def test_names_load_in_diffusers(family, dialect):
    """diffusers' LoRA reader is the oracle: a file named by kohya_name (kohya dialect) or peft_name
    (diffusers/PEFT dialect, text encoders with `text_model.`) loads onto exactly the targeted modules of
    a tiny pipeline: attention, resnets, samplers, conv_in/out, embeddings and every text encoder."""
    from tiny import tiny_pipeline

    pipe = tiny_pipeline(family)
    unet = pipe.unet
    torch.manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    targets = [("unet", unet), ("te1", pipe.text_encoder)]
    if family == "sdxl":
        targets.append(("te2", pipe.text_encoder_2))
    wanted: dict[str, set[str]] = {c: set() for c, _ in targets}
    for component, model in targets:
        for path, m in model.named_modules():
            if component == "unet" and not isinstance(m, LINEAR_CONV):
                continue
            if component != "unet" and path.rsplit(".", 1)[-1] not in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
                continue
            if isinstance(m, torch.nn.Linear):
                down, up = torch.randn(2, m.in_features), torch.randn(m.out_features, 2)
            else:
                down, up = torch.randn(2, m.in_channels, *m.kernel_size), torch.randn(m.out_channels, 2, 1, 1)
            if dialect == "kohya":
                name = kohya_name(component, path, family, unet.config)
                state.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                              f"{name}.alpha": torch.tensor(2.0)})
            else:
                name = peft_name(component, path)
                state.update({f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up})
            wanted[component].add(normalize_module_path(component, path))
    pipe.load_lora_weights(state)
    for component, model in targets:
        loaded = {normalize_module_path(component, n.removesuffix(".lora_A"))
                  for n, _ in model.named_modules() if n.endswith(".lora_A")}
        assert loaded == wanted[component], component


SPLIT = [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
     "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_down.weight"),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
     "lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_up.weight"),
    ("lora_unet_input_blocks_4_1_proj_in.alpha", "lora_unet_input_blocks_4_1_proj_in", "alpha"),
    ("lora_unet_input_blocks_1_0_in_layers_2.lora_mid.weight", "lora_unet_input_blocks_1_0_in_layers_2", "lora_mid.weight"),
    ("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", "unet.down_blocks.0.attentions.0.proj_in", "lora_down.weight"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "lora_up.weight"),
    ("unet.mid_block.attentions.0.proj_out.lora_magnitude_vector", "unet.mid_block.attentions.0.proj_out", "dora_scale"),
    ("unet.conv_in.lora_magnitude_vector.weight", "unet.conv_in", "dora_scale"),
    ("lora_unet_conv_in.dora_scale", "lora_unet_conv_in", "dora_scale"),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "lora_down.weight"),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_linear_layer.up.weight",
     "text_encoder.text_model.encoder.layers.0.mlp.fc2", "lora_up.weight"),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "lora_down.weight"),
    ("up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor.to_out_lora.up.weight",
     "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0", "lora_up.weight"),
    ("text_encoder.text_model.encoder.layers.5.self_attn.to_out_lora.down.weight",
     "text_encoder.text_model.encoder.layers.5.self_attn.out_proj", "lora_down.weight"),
    ("text_encoder.text_model.encoder.layers.5.self_attn.to_k_lora.up.weight",
     "text_encoder.text_model.encoder.layers.5.self_attn.k_proj", "lora_up.weight"),
    *[(f"lycoris_conv_in.{s}", "lycoris_conv_in", s) for s in (
        "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
        "diff", "diff_b", "w_norm", "b_norm", "dora_scale", "scale", "on_input", "alpha")],
    ("lora_unet_conv_in.something_else", "lora_unet_conv_in.something_else", ""),
    ("lora_unet_conv_in.weight", "lora_unet_conv_in.weight", ""),
]


@pytest.mark.parametrize("key, module, suffix", SPLIT)
def test_split_key(key, module, suffix):
    assert split_key(key) == (module, suffix)
