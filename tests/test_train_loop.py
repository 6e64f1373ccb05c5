"""The training loop on the tiny offline models: every algorithm, SD1/SD2/SDXL shapes, with and without the
text encoders; the training-set loss falls; the file loads in sdlora, diffusers and lycoris-lora; caches,
samples, non-finite steps, Ctrl+C and the command line."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from sdlora.adapters import load_adapter
from sdlora.files.tensors import read_metadata, read_tensors
from sdlora.models import open_model
from sdlora.trainers import Trainer, TrainingStopped, load_config
from sdlora.trainers.config import to_dict
from trainkit import config, draw, make_images, model_dir, one_thread, quiet, write_toml  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(raw: dict, **kw) -> Trainer:
    return Trainer(load_config(raw=raw), log=quiet, **kw)


def _unet_out(unet, family: str, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 64 if family == "sdxl" else 32, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[32., 32, 0, 0, 32, 32]])} \
        if family == "sdxl" else None
    with torch.no_grad():
        return unet(x, torch.tensor([500]), ctx, added_cond_kwargs=added).sample


def test_training_set_loss_falls(tmp_path):
    raw = config(tmp_path, "sd1", training={"max_steps": 20, "learning_rate": 3e-3, "batch_size": 2})
    tr = _trainer(raw)
    before = tr.measure_loss(timesteps=(100, 400, 700))
    result = tr.run()
    after = tr.measure_loss(timesteps=(100, 400, 700))
    assert after < 0.85 * before, (before, after)
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 20 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert result.adapter == tmp_path / "out" / "tiny.safetensors" and result.adapter.is_file()


@pytest.mark.parametrize("family, algo, te, extra", [
    ("sd1", "lora", True, {}),
    ("sd1", "locon", False, {"conv_rank": 2, "dora": True}),
    ("sd1", "loha", False, {}),
    ("sd1", "lokr", False, {"factor": 4}),
    ("sdxl", "lora", True, {"preset": "full", "conv_rank": 4}),  # attention-only LoRA is slow on tiny SDXL
    ("sdxl", "lokr", False, {}),
    ("sdxl", "loha", True, {"preset": "attn"}),  # LoHa starts slowly (w2_a = 0): a higher rate below
])
def test_each_algorithm_trains_and_loads_everywhere(tmp_path, family, algo, te, extra):
    lr = 3e-2 if algo == "loha" and family == "sdxl" else 3e-3
    raw = config(tmp_path, family, network={"algo": algo, **extra},
                 training={"max_steps": 5, "learning_rate": lr, "train_text_encoder": te})
    tr = _trainer(raw)
    before = tr.measure_loss(timesteps=(500,))
    result = tr.run()
    assert tr.measure_loss(timesteps=(500,)) < before
    assert ("te1" in tr.network.components()) == te and ("te2" in tr.network.components()) == (te and family == "sdxl")
    ours = _unet_out(tr.model.unet, family)

    model = open_model(model_dir(family))
    net, report = load_adapter(result.adapter, model.components(), family)  # strict
    assert report.ok and report.total_matched == len(tr.network)
    assert {m.algo for m in net.values()} == {"lora" if algo == "locon" else algo}
    assert torch.allclose(_unet_out(model.unet, family), ours, atol=1e-5)
    meta = read_metadata(result.adapter)
    assert meta["ss_steps"] == "5" and meta["ss_base_model_version"] == ("sdxl_base_v1-0" if family == "sdxl" else "sd_v1")
    assert json.loads(meta["sdlora_config"]) == json.loads(json.dumps(to_dict(tr.cfg)))
    assert json.loads(meta["sdlora_trigger_words"]) == ["sks"]
    assert json.loads(meta["ss_tag_frequency"])["data"]["sks"] == 4

    n_unet = sum(1 for c, _, _ in net.items_by_module() if c == "unet")
    if algo == "lora" and family == "sd1":  # diffusers reads kohya files (LoRA only)
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(model_dir(family)), local_files_only=True)
        pipe.load_lora_weights(str(result.adapter))
        loaded = sum(1 for m in (pipe.unet, pipe.text_encoder) for n, _ in m.named_modules() if n.endswith(".lora_A"))
        assert loaded == len(tr.network)
        assert torch.allclose(_unet_out(pipe.unet, family), ours, atol=1e-5)
    elif family == "sd1" and not te:  # lycoris-lora's own loader: SD1 kohya names are its names, prefixed
        from lycoris import create_lycoris_from_weights
        from safetensors.torch import save_file

        tensors, _ = read_tensors(result.adapter)
        renamed = tmp_path / "lycoris.safetensors"
        save_file({k.replace("lora_unet_", "lycoris_", 1): v for k, v in tensors.items()}, str(renamed))
        unet = copy.deepcopy(open_model(model_dir(family)).unet)
        lnet, _ = create_lycoris_from_weights(1.0, str(renamed), unet)
        assert len(lnet.loras) == n_unet
        lnet.apply_to()
        assert torch.allclose(_unet_out(unet, family), ours, atol=1e-5)


def test_v_prediction_and_loss_options(tmp_path):
    """SD2-shaped v-prediction model with min-SNR, noise offset, multires noise, Huber loss, cosine schedule."""
    raw = config(tmp_path, "sd2", training={"max_steps": 6, "gradient_accumulation": 2},
                 noise={"min_snr_gamma": 5.0, "offset": 0.05, "multires_iterations": 3, "loss": "huber"},
                 optimizer={"scheduler": "cosine", "warmup_steps": 2, "name": "lion"})
    tr = _trainer(raw)
    assert tr.prediction_type == "v_prediction"
    result = tr.run()
    assert len(result.losses) == 6 and not result.skipped
    assert read_metadata(result.adapter)["ss_base_model_version"] == "sd_v2_v"


@pytest.mark.parametrize("name", ["lion", "adafactor"])  # adamw: every other test
def test_optimizers_step(tmp_path, name):
    tr = _trainer(config(tmp_path, "sd1", training={"max_steps": 2}, optimizer={"name": name}))
    before = {k: v.clone() for k, v in tr.network.state_dict().items()}
    tr.run()
    assert any(not torch.equal(before[k], v) for k, v in tr.network.state_dict().items())


def test_missing_optional_optimizers_say_what_to_install(tmp_path):
    from sdlora.errors import ConfigError

    for name, package in (("prodigy", "prodigyopt"), ("adamw8bit", "bitsandbytes")):
        try:
            __import__(package)
            continue
        except ImportError:
            pass
        with pytest.raises(ConfigError, match=f"needs the {package} package"):
            _trainer(config(tmp_path, "sd1", optimizer={"name": name}))


def test_masked_loss_and_prior_preservation(tmp_path):
    data = make_images(tmp_path / "data", 2)
    rgba = draw((32, 32), 4).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(data / "alpha.png")
    reg = make_images(tmp_path / "reg", 2, caption=False, prefix="r")
    raw = config(tmp_path, "sd1", data=data, dataset={"alpha_mode": "mask", "reg_path": str(reg),
                                                       "class_token": "square", "prior_loss_weight": 0.5},
                 training={"max_steps": 3})
    tr = _trainer(raw)
    assert sum(it.has_alpha_mask for it in tr.dataset.items) == 1
    assert sorted(s.loss_weight for s in tr.dataset.subsets) == [0.5, 1.0]
    item = next(i for i, it in enumerate(tr.dataset.items) if it.has_alpha_mask)
    batch = tr._batch([item], 0, 0, 0)
    assert batch.mask is not None and batch.mask.shape == (1, 1, 8, 8)
    assert float(batch.mask.mean()) == pytest.approx(128 / 255, abs=0.01)
    result = tr.run()
    assert len(result.losses) == 3
    assert read_metadata(result.adapter)["ss_num_reg_images"] == "2"


def test_caches_on_disk_encode_only_what_changed(tmp_path):
    data = make_images(tmp_path / "data", 3)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")  # reported, never trained on
    raw = config(tmp_path, "sdxl", data=data, training={"max_steps": 1, "cache_to_disk": True,
                                                        "cache_dir": str(tmp_path / "cache")},
                 dataset={"flip": True})
    first = _trainer(raw)
    assert [p.name for p, _ in first.dataset.report.skipped] == ["broken.jpg"]
    assert first.cache_stats == {"latents encoded": 6, "latents reused": 0, "text encoded": 3, "text reused": 0}
    first.run()
    assert _trainer(raw).cache_stats == {"latents encoded": 0, "latents reused": 6, "text encoded": 0,
                                         "text reused": 3}
    draw((32, 32), 5).save(data / "img1.png")  # one image changes
    assert _trainer(raw).cache_stats["latents encoded"] == 2  # itself, flipped and not


def test_caching_is_disabled_where_it_would_be_wrong(tmp_path):
    lines: list[str] = []
    raw = config(tmp_path, "sd1", dataset={"crop": "random", "shuffle_captions": True}, training={"max_steps": 2})
    tr = Trainer(load_config(raw=raw), log=lines.append)
    assert tr.latent_cache is None and tr.text_cache is None
    assert any("random crop are not cached" in line for line in lines)
    assert any("caption shuffling" in line for line in lines)
    assert len(tr.run().losses) == 2
    raw = config(tmp_path, "sd1", training={"max_steps": 1, "train_text_encoder": True})
    lines.clear()
    tr = Trainer(load_config(raw=raw), log=lines.append)
    assert tr.text_cache is None and any("text encoders are trained" in line for line in lines)


def test_samples_use_the_prompt_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nsks, a square --n blurry --d 5 --s 2 --l 3\n\nsks --w 40 --h 32 --s 1 --ss ddim\n")
    raw = config(tmp_path, "sd1", training={"max_steps": 2}, output={"tensorboard": True},
                 sample={"prompts": str(prompts), "every_steps": 2})
    result = _trainer(raw).run()
    files = sorted((tmp_path / "out" / "samples").glob("*.png"))
    assert [f.name for f in files] == ["step000002-0.png", "step000002-1.png"]
    from PIL import Image

    with Image.open(files[0]) as im:
        assert im.size == (16, 16) and "Negative prompt: blurry" in im.info["parameters"]
        assert "Seed: 5" in im.info["parameters"] and "Steps: 2" in im.info["parameters"]
    with Image.open(files[1]) as im:
        assert im.size == (40, 32)
    assert list((tmp_path / "out" / "logs").glob("events.out.tfevents*"))
    assert len(result.losses) == 2


def test_bad_prompt_file_is_a_config_error(tmp_path):
    from sdlora.errors import ConfigError

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat --q 3\n")
    with pytest.raises(ConfigError, match="line 1: unknown option --q"):
        _trainer(config(tmp_path, "sd1", sample={"prompts": str(prompts)}))
    prompts.write_text("a cat --s many\n")
    with pytest.raises(ConfigError, match="--s 'many' is not a number"):
        _trainer(config(tmp_path, "sd1", sample={"prompts": str(prompts)}))


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path, monkeypatch):
    raw = config(tmp_path, "sd1", training={"max_steps": 10, "max_bad_steps": 3})
    tr = _trainer(raw)
    real = Trainer._loss
    calls = {"n": 0}

    def flaky(self, batch, noise, timesteps):
        calls["n"] += 1
        loss = real(self, batch, noise, timesteps)
        return loss * float("nan") if calls["n"] in (2, 5, 6, 7, 8, 9) else loss

    monkeypatch.setattr(Trainer, "_loss", flaky)
    with pytest.raises(TrainingStopped, match="stopped at step 7: 3 steps in a row had a non-finite loss") as info:
        tr.run()
    assert "tiny-last-good.safetensors" in str(info.value)
    good, _ = read_tensors(tmp_path / "out" / "tiny-last-good.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())


def test_ctrl_c_saves_state_and_adapter(tmp_path):
    raw = config(tmp_path, "sd1", training={"max_steps": 10})
    tr = _trainer(raw)

    def interrupt(trainer, step):
        if step == 3:
            raise KeyboardInterrupt

    tr.on_step.append(interrupt)
    result = tr.run()
    assert result.interrupted and result.step == 3
    assert (tmp_path / "out" / "state-3" / "trainer.json").is_file()
    assert (tmp_path / "out" / "tiny-step000003.safetensors").is_file()
    assert not (tmp_path / "out" / "tiny.safetensors").exists()


def test_command_line_trains_with_overrides(tmp_path, capsys):
    from sdlora.cli import main

    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 50}))
    code = main(["train", str(toml), "--set", "training.max_steps=3", "--set", "output.name=cli",
                 "--set", "training.save_every_steps=2"])
    assert code == 0
    out = tmp_path / "out"
    assert (out / "cli.safetensors").is_file() and (out / "state-2").is_dir() and (out / "state-3").is_dir()
    assert (out / "cli-step000002.safetensors").is_file()
    saved = load_config(out / "config.toml")
    assert saved.training.max_steps == 3 and saved.output.name == "cli"
    assert "done: 3 steps" in capsys.readouterr().out
    code = main(["train", str(toml), "--set", "training.max_stepz=3"])
    assert code == 2 and "training.max_stepz is not a config key" in capsys.readouterr().err


def _first_gradients(raw: dict) -> dict[str, torch.Tensor]:
    tr = _trainer(raw)
    from sdlora.trainers.batches import epoch_batches

    batch = epoch_batches(tr.dataset, tr.cfg.training.seed, 0, tr.global_batch)[0]
    tr._micro(batch, 0, 0, 0, 0, 1).backward()
    return {n: p.grad.clone() for n, p in tr.network.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    raw = config(tmp_path, "sd1", training={"train_text_encoder": True})
    plain = _first_gradients(raw)
    raw["training"]["gradient_checkpointing"] = True
    checkpointed = _first_gradients(raw)
    assert plain.keys() == checkpointed.keys() and any(k.startswith("te1/") for k in plain)
    for k in plain:
        assert torch.allclose(plain[k], checkpointed[k], rtol=1e-4, atol=1e-7), k


def test_bf16_mixed_precision_keeps_adapters_in_fp32(tmp_path):
    lines: list[str] = []
    raw = config(tmp_path, "sd1", training={"max_steps": 2, "mixed_precision": "bf16", "train_text_encoder": True},
                 model={"attention": "xformers"})
    tr = Trainer(load_config(raw=raw), log=lines.append)
    assert tr.model.unet.dtype == torch.bfloat16 and tr.model.vae.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tr.network.parameters())
    result = tr.run()
    assert len(result.losses) == 2
    try:
        import xformers  # noqa: F401
    except ImportError:
        assert any("xformers is not usable here" in line for line in lines)


def test_schedules_warmup_and_text_encoder_stop():
    from sdlora.trainers.config import OptimizerSection
    from sdlora.trainers.optim import lr_factor, make_scheduler

    assert [round(lr_factor("constant", s, 2, 10), 3) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor("linear", 6, 2, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 2, 2, 10) == 1.0 and lr_factor("cosine", 10, 2, 10) == pytest.approx(0.0)
    restarts = [lr_factor("cosine_with_restarts", s, 0, 10, cycles=2) for s in range(10)]
    assert restarts[0] == 1.0 and restarts[5] == 1.0 and restarts[4] < 0.2 and restarts[9] < 0.2
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1.0, "name": "unet"},
                             {"params": [params[1]], "lr": 0.5, "name": "te1"}])
    sched = make_scheduler(opt, OptimizerSection(scheduler="constant"), 10, te_stop_step=3)
    lrs = []
    for _ in range(5):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs == [[1.0, 0.5]] * 3 + [[1.0, 0.0]] * 2


def test_epochs_limit_and_save_every_epoch(tmp_path, capsys):
    from sdlora.cli import main

    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={
        "max_steps": 100, "max_epochs": 2, "save_every_epochs": 1}))
    assert main(["train", str(toml), "--check"]) == 0
    assert "4 steps of 4 images would be trained" in capsys.readouterr().out
    assert not (tmp_path / "out" / "tiny.safetensors").exists()
    assert main(["train", str(toml)]) == 0  # 4 images, batch 2: 2 steps an epoch
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("state-*")) == ["state-2", "state-4"]
    assert (out / "tiny-step000002.safetensors").is_file() and read_metadata(out / "tiny.safetensors")["ss_num_epochs"] == "2"


def test_trains_on_a_single_file_checkpoint(tmp_path):
    from sdlora.models import save_model

    save_model(open_model(model_dir("sd1")), tmp_path / "tiny.safetensors")
    raw = config(tmp_path, "sd1", model={"path": str(tmp_path / "tiny.safetensors"),
                                         "tokenizer": str(model_dir("sd1"))}, training={"max_steps": 2})
    from_file = _trainer(raw).run()
    raw = config(tmp_path, "sd1", training={"max_steps": 2}, output={"dir": str(tmp_path / "folder")})
    from_folder = _trainer(raw).run()
    assert from_file.losses == from_folder.losses
