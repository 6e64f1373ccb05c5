"""The training config: TOML -> typed sections, overrides, errors that name key, value and what is allowed."""
from __future__ import annotations

import pathlib
import tomllib

import pytest

from sdlora.errors import ConfigError
from sdlora.trainers.config import config_from_dict, dump_toml, load_config

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
MINIMAL = '[model]\npath = "model"\n[dataset]\npath = "images"\n'


def _write(tmp_path, text: str) -> pathlib.Path:
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_minimal_config_has_defaults_and_resolves_paths(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.model.path == str(tmp_path / "model")
    assert cfg.dataset.path == str(tmp_path / "images")
    assert cfg.output.dir == str(tmp_path / "output")
    assert cfg.network.algo == "lora" and cfg.training.max_steps == 1000 and cfg.resolution == (512, 512)
    assert cfg.adapter_path == tmp_path / "output" / "adapter.safetensors"


def test_overrides_set_any_key_with_toml_values(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), [
        "training.max_steps=200", "network.algo=lokr", "network.alpha=2.5", "dataset.resolution=[768, 512]",
        "training.train_text_encoder=true", "network.include=['attn1']", "output.name=my adapter"])
    assert cfg.training.max_steps == 200 and cfg.network.algo == "lokr" and cfg.network.alpha == 2.5
    assert cfg.resolution == (768, 512) and cfg.training.train_text_encoder is True
    assert cfg.network.include == ["attn1"] and cfg.output.name == "my adapter"


def test_override_of_a_subset_by_index(tmp_path):
    text = MINIMAL + '[[dataset.subsets]]\npath = "a"\n[[dataset.subsets]]\npath = "b"\nis_reg = true\n'
    cfg = load_config(_write(tmp_path, text), ["dataset.subsets.1.repeats=3"])
    assert cfg.dataset.subsets[1].repeats == 3 and cfg.dataset.subsets[1].is_reg
    with pytest.raises(ConfigError, match="has 2 entries"):
        load_config(_write(tmp_path, text), ["dataset.subsets.5.repeats=3"])


@pytest.mark.parametrize("override, message", [
    ("training.max_steps=-5", "training.max_steps = -5 is out of range: it must be at least 1"),
    ("training.max_stepz=5", "training.max_stepz is not a config key.*did you mean 'max_steps'"),
    ("network.algo=lorra", 'network.algo = "lorra" is not allowed: use one of "lora", "locon", "loha", "lokr"'),
    ("training.learning_rate='fast'", 'training.learning_rate = "fast" is not allowed: it must be a number'),
    ("training.cache_latents=1", "training.cache_latents = 1 is not allowed: it must be true or false"),
    ("network.rank=2.5", "network.rank = 2.5 is not allowed: it must be an integer"),
    ("network.dropout=1.5", "network.dropout = 1.5 is out of range: it must be at most 0.99"),
    ("dataset.caption_dropout=-0.1", "dataset.caption_dropout = -0.1 is out of range"),
    ("training.mixed_precision=fp8", 'training.mixed_precision = "fp8" is not allowed: use one of "no", "fp16", "bf16"'),
    ("dataset.bucket_step=60", "dataset.bucket_step = 60 is not allowed: use a multiple of 8"),
    ("dataset.background=blurple", 'dataset.background = "blurple" is not a colour'),
    ("optimizer.betas=[0.9]", "optimizer.betas = \\[0.9\\] is not allowed"),
    ("trainig.max_steps=5", r"\[trainig\] is not a config section.*did you mean \[training\]"),
    ("output.name=a/b", 'output.name = "a/b" is not allowed'),
    ("dataset.resolution=500", "dataset.resolution = 500 is not allowed: sides must be multiples of 8"),
    ("dataset.caption_extension=txt", 'dataset.caption_extension = "txt" is not allowed: write it with its dot'),
    ("training.min_timestep=500", None),
])
def test_bad_values_name_key_value_and_allowed(tmp_path, override, message):
    path = _write(tmp_path, MINIMAL)
    if message is None:  # a valid value: no error
        load_config(path, [override])
        with pytest.raises(ConfigError, match="must be below training.max_timestep"):
            load_config(path, [override, "training.max_timestep=400"])
        return
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, [override])
    assert str(path) in str(info.value)  # the file is named too


def test_missing_required_keys_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="model.path is empty"):
        load_config(_write(tmp_path, '[dataset]\npath = "x"\n'))
    with pytest.raises(ConfigError, match="dataset.path is empty"):
        load_config(_write(tmp_path, '[model]\npath = "x"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[model\npath = 1"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="write section.key=value"):
        load_config(_write(tmp_path, MINIMAL), ["max_steps"])
    with pytest.raises(ConfigError, match=r"dataset.subsets\[0\].repeats = 0 is out of range"):
        load_config(_write(tmp_path, MINIMAL + '[[dataset.subsets]]\npath = "a"\nrepeats = 0\n'))


def test_resolved_config_round_trips_through_toml(tmp_path):
    text = MINIMAL + '[[dataset.subsets]]\npath = "ä b/10_sks dog"\nflip = true\n[network]\nalpha = 4\n'
    cfg = load_config(_write(tmp_path, text), ["training.te2_lr=1e-5", "dataset.resolution=[64, 32]"])
    again = config_from_dict(tomllib.loads(dump_toml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_shipped_example_configs_are_valid(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.path and (cfg.dataset.path or cfg.dataset.subsets)


def test_examples_are_shipped():
    names = {p.stem for p in CONFIGS.glob("*.toml")}
    assert {"quickstart", "sd15-character", "sd15-style", "sdxl-style", "sd15-loha", "sd15-lokr"} <= names
