"""Resumable training states: ``<output.dir>/state-N/`` after optimiser step N.

A state folder holds
  adapter.safetensors    the Network's state_dict (fp32, Network keys)
  optimizer.safetensors  every tensor of the optimiser state, keyed "<param index>.<name>"
  optimizer.json         its param_groups and non-tensor state
  scheduler.json         the LR scheduler's state_dict (plain numbers)
  trainer.json           step, epoch, batch position, counters, the resolved config
  rng-R.safetensors / rng-R.json   torch (CPU, CUDA), numpy and Python RNG states of process R
It is written to a hidden temporary folder and renamed into place, so an interrupted save leaves the
previous states as they were. Nothing is read with pickle.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlora.files import tensors as files
from sdlora.errors import SdloraError

STATE_VERSION = 1
_STATE_DIR = re.compile(r"^state-(\d+)$")


class StateError(SdloraError):
    """A resume folder that is missing, incomplete, or from another training."""


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["state"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, inner, gauss = random.getstate()
    plain = {"numpy": [kind, keys.tolist(), pos, has_gauss, cached], "python": [version, list(inner), gauss]}
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, inner, gauss = plain["python"]
    random.setstate((version, tuple(inner), gauss))


def _write_json(path: Path, data: Any) -> None:
    files.atomic_write_bytes(path, json.dumps(data, indent=1, default=_json_default).encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if torch.is_tensor(obj) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a state file")


def state_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f"state-{step}"


def save_rng(folder: Path, rank: int) -> None:
    tensors, plain = rng_state()
    files.write_tensors(folder / f"rng-{rank}.safetensors", tensors, hashes=False)
    _write_json(folder / f"rng-{rank}.json", plain)


def save_state(output_dir: Path, step: int, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler, trainer: dict, scaler_state: dict | None = None) -> Path:
    """Write state-``step`` (main process); returns its folder."""
    target = state_dir(output_dir, step)
    tmp = Path(output_dir) / f".state-{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        files.write_tensors(tmp / "adapter.safetensors", network.state_dict(), hashes=False)
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        files.write_tensors(tmp / "optimizer.safetensors", tensors, hashes=False)
        _write_json(tmp / "optimizer.json", meta)
        _write_json(tmp / "scheduler.json", scheduler.state_dict())
        _write_json(tmp / "trainer.json", dict(trainer, version=STATE_VERSION, scaler=scaler_state))
        save_rng(tmp, 0)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass
class State:
    folder: Path
    trainer: dict
    network: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict

    @property
    def step(self) -> int:
        return int(self.trainer["step"])

    def rng(self, rank: int) -> tuple[dict[str, torch.Tensor], dict] | None:
        t, j = self.folder / f"rng-{rank}.safetensors", self.folder / f"rng-{rank}.json"
        if not (t.is_file() and j.is_file()):
            return None
        return files.read_tensors(t, check_finite=False)[0], json.loads(j.read_text())


def find_state(path: str | Path) -> Path:
    """A state folder itself, or the latest ``state-N`` inside an output folder."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    if path.is_dir():
        found = sorted(((int(m.group(1)), p) for p in path.iterdir()
                        if (m := _STATE_DIR.match(p.name)) and (p / "trainer.json").is_file()))
        if found:
            return found[-1][1]
        raise StateError(f"--resume {path}: no state-N folder in it; states are written every "
                         "training.save_every_steps steps and when training is interrupted")
    raise StateError(f"--resume {path}: no such folder; name a state-N folder or the output folder that holds them")


def load_state(path: str | Path) -> State:
    folder = find_state(path)
    try:
        trainer = json.loads((folder / "trainer.json").read_text())
        network, _ = files.read_tensors(folder / "adapter.safetensors", check_finite=False)
        opt_tensors, _ = files.read_tensors(folder / "optimizer.safetensors", check_finite=False)
        optimizer = _unflatten_optimizer(opt_tensors, json.loads((folder / "optimizer.json").read_text()))
        scheduler = json.loads((folder / "scheduler.json").read_text())
    except (OSError, ValueError, KeyError, SdloraError) as exc:
        raise StateError(f"{folder}: the state is incomplete or damaged ({exc}); resume from an earlier "
                         "state-N folder") from None
    if trainer.get("version") != STATE_VERSION:
        raise StateError(f"{folder}: state version {trainer.get('version')} is not {STATE_VERSION}; it was "
                         "written by another sdlora version")
    return State(folder, trainer, network, optimizer, scheduler)


def prune(output_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` latest state-N folders."""
    found = sorted((int(m.group(1)), p) for p in Path(output_dir).iterdir() if (m := _STATE_DIR.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
