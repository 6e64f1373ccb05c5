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

from sdlora.files.tensors import display_path
from sdlora.trainers.config import to_dict
from sdlora.trainers.state import State, StateError, set_rng_state

CHANGEABLE: frozenset[str] = frozenset({
    "training.max_steps", "training.max_epochs", "training.learning_rate", "training.unet_lr",
    "training.te1_lr", "training.te2_lr", "training.save_every_steps", "training.save_every_epochs",
    "training.keep_last", "training.max_grad_norm", "training.max_bad_steps", "training.gradient_checkpointing",
    "training.cache_latents", "training.cache_text_outputs", "training.cache_to_disk", "training.cache_dir",
    "training.compile", "training.compile_backend", "training.channels_last",  # speed levers (speed.py)
    "optimizer.scheduler", "optimizer.warmup_steps", "optimizer.cycles",
    "optimizer.fused",  # the same AdamW update and state layout, one kernel instead of a loop
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
    """The changeable differences between the state's config and this one; StateError for the others."""
    diff = differences(saved, current)
    fixed = {k: v for k, v in diff.items() if not changeable(k)}
    if fixed:
        listed = ", ".join(f"{k} ({_show(a)} in the state, {_show(b)} now)" for k, (a, b) in fixed.items())
        raise StateError(
            f"--resume {folder}: {listed} cannot change on resume: the state was trained with its values. "
            "Resume with the state's values (drop the --set, or use the config.toml saved beside the states), "
            "or start a new training into another output.dir")
    return {k: v for k, v in diff.items() if changeable(k)}


def describe(changes: dict[str, tuple[Any, Any]], step: int) -> list[str]:
    return [f"resume: {k} {_show(a)} -> {_show(b)} (applied from step {step + 1})" for k, (a, b) in changes.items()]


def _reschedule(optimizer, scheduler, initial: list[float]) -> None:
    """After loading a state, use this config's initial rates and schedule from the state's step on."""
    step = scheduler.last_epoch
    for group, lr0, factor in zip(optimizer.param_groups, initial, scheduler.lr_lambdas):
        group["initial_lr"] = lr0
        group["lr"] = lr0 * factor(step)
    scheduler.base_lrs = list(initial)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def restore(trainer, st: State) -> None:
    """Load state ``st`` into ``trainer`` (a Trainer whose network, optimiser and scheduler are built from
    this run's config): refuse differences that cannot change, apply and print the ones that can."""
    for note in st.notes:
        trainer.log(note)
    folder = display_path(st.folder)
    changes = check(st.trainer["config"], to_dict(trainer.cfg), folder)
    if st.trainer.get("global_batch") != trainer.global_batch:
        trainer.log(f"resume: the state was trained with a global batch of {st.trainer.get('global_batch')}, this "
                    f"run uses {trainer.global_batch}; the data order will differ from an uninterrupted run")
    try:
        trainer.network.load_state_dict({k: v.to(trainer.device) for k, v in st.network.items()})
    except RuntimeError as exc:
        raise StateError(f"{folder}: the state's adapter does not fit the [network] of this config "
                         f"({str(exc).splitlines()[0]}); resume with the config it was trained with") from None
    initial = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    try:
        trainer.optimizer.load_state_dict(st.optimizer)
        trainer.scheduler.load_state_dict(st.scheduler)
    except (ValueError, KeyError) as exc:
        raise StateError(f"{folder}: the optimiser state does not fit this config ({exc}); resume "
                         "with the optimizer settings it was trained with") from None
    if SCHEDULE_KEYS & changes.keys():
        _reschedule(trainer.optimizer, trainer.scheduler, initial)
    scaler = trainer.accelerator.scaler
    if scaler is not None and st.trainer.get("scaler"):
        scaler.load_state_dict(st.trainer["scaler"])
    t = st.trainer
    trainer.step, trainer.epoch, trainer.position = int(t["step"]), int(t["epoch"]), int(t["position"])
    trainer.bad_in_row = int(t.get("bad_in_row", 0))
    trainer.started_at = float(t.get("started_at", trainer.started_at))
    rng = st.rng(trainer.rank)
    if rng is not None:
        set_rng_state(*rng)
    for line in describe(changes, trainer.step):
        trainer.log(line)
    trainer.log(f"resumed from {folder} at step {trainer.step} (epoch {trainer.epoch + 1}, batch {trainer.position})")
