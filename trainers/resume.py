"""Which settings may change when a training is resumed, and applying the ones that did.

A resumed run continues the state's training, so whatever decides what was learnt so far must stay as the
state recorded it: the model, the network's shape, the data and how it is drawn, the seed, the batch, the
noise and the optimiser's kind. ``CHANGEABLE`` lists the keys that may differ (the schedule's length and
rates, save/sample cadence, logging, caching and output naming); ``check`` refuses any other difference
with one sentence naming each key, and returns the changeable differences for the trainer to apply and
print. Keys are compared as ``section.key`` on the resolved config (``config.to_dict``).
"""
from __future__ import annotations

from typing import Any

from sdlora.errors import ConfigError

CHANGEABLE: frozenset[str] = frozenset({
    "training.max_steps", "training.max_epochs", "training.learning_rate", "training.unet_lr",
    "training.te1_lr", "training.te2_lr", "training.save_every_steps", "training.save_every_epochs",
    "training.keep_last", "training.max_grad_norm", "training.max_bad_steps", "training.gradient_checkpointing",
    "training.cache_latents", "training.cache_text_outputs", "training.cache_to_disk", "training.cache_dir",
    "optimizer.scheduler", "optimizer.warmup_steps", "optimizer.cycles",
    "model.attention",
    "output.dir", "output.name", "output.save_dtype", "output.tensorboard", "output.comment",
})
CHANGEABLE_SECTIONS: frozenset[str] = frozenset({"sample"})  # every key: prompts, cadence, sampler settings
# keys that change the learning-rate schedule: after resuming, each group's rate is recomputed from them
SCHEDULE_KEYS: frozenset[str] = frozenset({
    "training.max_steps", "training.max_epochs", "training.learning_rate", "training.unet_lr",
    "training.te1_lr", "training.te2_lr", "optimizer.scheduler", "optimizer.warmup_steps", "optimizer.cycles"})


def changeable(key: str) -> bool:
    return key in CHANGEABLE or key.split(".", 1)[0] in CHANGEABLE_SECTIONS


def _flat(cfg: dict) -> dict[str, Any]:
    out = {}
    for section, values in cfg.items():
        if isinstance(values, dict):
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        else:
            out[section] = values
    return out


def differences(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{section.key: (state's value, this config's value)} for every key that differs."""
    a, b = _flat(saved), _flat(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _show(value: Any) -> str:
    return "(unset)" if value is None else (repr(value) if isinstance(value, str) else f"{value}")


def check(saved: dict, current: dict, folder: str) -> dict[str, tuple[Any, Any]]:
    """The changeable differences between the state's config and this one; ConfigError for the others."""
    diff = differences(saved, current)
    fixed = {k: v for k, v in diff.items() if not changeable(k)}
    if fixed:
        listed = ", ".join(f"{k} ({_show(a)} in the state, {_show(b)} now)" for k, (a, b) in fixed.items())
        raise ConfigError(
            f"--resume {folder}: {listed} cannot change on resume: they decide what the state has learnt so far. "
            "Resume with the state's values (drop the --set, or use the config.toml saved beside the states), "
            "or start a new training into another output.dir")
    return {k: v for k, v in diff.items() if changeable(k)}


def describe(changes: dict[str, tuple[Any, Any]], step: int) -> list[str]:
    return [f"resume: {k} {_show(a)} -> {_show(b)} (applied from step {step + 1})" for k, (a, b) in changes.items()]
