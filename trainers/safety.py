"""What a training does so that a failure loses nothing: tidy the output folder before it starts, and save
what it has when an error ends it.

- ``prepare_output``: make the output folder (a SaveError sentence when it cannot be made), remove what
  killed saves left there (``streaming.clean_stale``: temporaries of dead processes, a state swap cut between
  its renames put back), and for a fresh run (no --resume) move the states and step adapters of an earlier
  run aside into ``earlier-run-<time>/`` (with its config.toml, so ``--resume`` of that folder still works),
  so the folder holds one run's states and ``--resume OUT`` continues this run.
- ``emergency_stop``: an error during training (an image gone, a full disk, an unwritable folder) first
  saves the adapter and state as of the last finished step, then becomes a TrainingStopped sentence that
  says what was saved and how to continue.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from sdlora.errors import SdloraError
from sdlora.files import streaming
from sdlora.files.tensors import display_path, is_write_error, make_folder, save_error
from sdlora.trainers import state as states


class TrainingStopped(SdloraError):
    """Training stopped early; the message says why and what was saved."""


def prepare_output(out: Path, name: str, fresh: bool, log: Callable[[str], None]) -> None:
    """Make and tidy ``out`` before a run; see the module docstring. Main process only."""
    make_folder(out)
    for line in streaming.clean_stale(out):
        log(f"note: {line}")
    if fresh:
        aside = states.set_aside(out, (f"{name}-step[0-9]*.safetensors", "config.toml"))
        if aside is not None:
            log(f"note: moved the states of an earlier run to {display_path(aside)}, so {display_path(out)} "
                f"holds this run's only (to continue that run instead, stop this one and use --resume {display_path(aside)})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SdloraError):
        return str(exc)
    if is_write_error(exc) and getattr(exc, "filename", None):
        return str(save_error(exc.filename, exc))
    return f"{type(exc).__name__}: {exc}"


def emergency_stop(trainer, exc: BaseException) -> TrainingStopped:
    """Save the adapter and state of ``trainer`` as of its last finished step; return the sentence to raise."""
    out = trainer.cfg.output_dir
    step = trainer.step
    reason = _reason(exc).rstrip(".")
    if step == trainer.first_step:
        saved = "no step was finished in this run, so nothing new was saved"
    else:
        path = out / f"{trainer.cfg.output.name}-step{step:06d}.safetensors"
        try:
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.save_adapter(path)
            folder = trainer.save_state()
            saved = (f"saved {display_path(path)} and {folder.name} as of step {step}; fix the cause, then continue "
                     f"with sdlora train --resume {display_path(out)}")
        except (SdloraError, OSError) as again:
            saved = f"the emergency save failed too ({_reason(again)})"
    return TrainingStopped(f"training stopped at step {step}: {reason}; {saved}")
