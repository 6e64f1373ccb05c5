"""Resumable training states: ``<output.dir>/state-N/`` after optimiser step N.

A state folder holds
  adapter.safetensors    the Network's state_dict (fp32, Network keys)
  optimizer.safetensors  every tensor of the optimiser state, keyed "<param index>.<name>"
  optimizer.json         its param_groups and non-tensor state
  scheduler.json         the LR scheduler's state_dict (plain numbers)
  trainer.json           step, epoch, batch position, counters, the resolved config
  rng-R.safetensors / rng-R.json   torch (CPU, CUDA), numpy and Python RNG states of process R
  complete.json          written last: every file above with its size and sha256
It is written to a hidden temporary folder and renamed into place, so an interrupted save leaves the
previous states as they were; the marker makes a state that was copied or synced only in part tell.
``load_state`` checks a state completely (marker, sizes and hashes, every JSON field it will use, tensors
finite) before using any of it; given an output folder it falls back from a damaged latest state to the
newest intact one and says why. Nothing is read with pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlora.files import streaming, tensors as files
from sdlora.errors import SdloraError

STATE_VERSION = 2
MARKER = "complete.json"
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_marker(folder: Path, step: int) -> None:
    listed = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir())
              if p.is_file() and not p.name.startswith(".")}
    _write_json(folder / MARKER, {"version": STATE_VERSION, "step": step, "files": listed})


def save_state(output_dir: Path, step: int, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler, trainer: dict, scaler_state: dict | None = None) -> Path:
    """Write state-``step`` (main process); returns its folder. Raises SaveError when it cannot be written."""
    target = state_dir(output_dir, step)
    tmp = Path(output_dir) / f".state-{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    files.make_folder(tmp)
    try:
        files.write_tensors(tmp / "adapter.safetensors", network.state_dict(), hashes=False)
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        files.write_tensors(tmp / "optimizer.safetensors", tensors, hashes=False)
        _write_json(tmp / "optimizer.json", meta)
        _write_json(tmp / "scheduler.json", scheduler.state_dict())
        _write_json(tmp / "trainer.json", dict(trainer, version=STATE_VERSION, scaler=scaler_state))
        save_rng(tmp, 0)
        _write_marker(tmp, step)
        streaming.replace_folder(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if files.is_write_error(exc):
            raise files.save_error(target, exc) from None
        raise
    return target


@dataclass
class State:
    folder: Path
    trainer: dict
    network: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rngs: dict[int, tuple[dict[str, torch.Tensor], dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was wrong with newer states that were passed over

    @property
    def step(self) -> int:
        return int(self.trainer["step"])

    def rng(self, rank: int) -> tuple[dict[str, torch.Tensor], dict] | None:
        return self.rngs.get(rank)


def _state_folders(path: Path) -> list[Path]:
    """The state-N folders in ``path``, newest (highest N) first."""
    found = sorted(((int(m.group(1)), p) for p in path.iterdir() if (m := _STATE_DIR.match(p.name)) and p.is_dir()),
                   reverse=True)
    return [p for _, p in found]


def _is_state_folder(path: Path) -> bool:
    return path.is_dir() and (bool(_STATE_DIR.match(path.name)) or (path / "trainer.json").is_file()
                              or (path / MARKER).is_file())


def find_state(path: str | Path) -> Path:
    """A state folder itself, or the latest ``state-N`` inside an output folder (not yet checked)."""
    path = Path(path)
    if _is_state_folder(path):
        return path
    if path.is_dir():
        found = _state_folders(path)
        if found:
            return found[0]
        raise StateError(f"--resume {files.display_path(path)}: no state-N folder in it; states are written every "
                         "training.save_every_steps steps and when training is interrupted")
    raise StateError(f"--resume {files.display_path(path)}: no such folder; name a state-N folder or the output "
                     "folder that holds them")


def load_state(path: str | Path) -> State:
    """The state in ``path`` (a state-N folder), or the newest intact one in an output folder.

    A damaged state-N named directly is refused (StateError naming the problem). In an output folder,
    damaged newer states are passed over; ``State.notes`` says which and why."""
    path = Path(path)
    if _is_state_folder(path):
        try:
            return read_state(path)
        except _Damaged as exc:
            raise StateError(f"{files.display_path(path)}: the state is incomplete or damaged ({exc}); resume "
                             "from an earlier state-N folder, or from the output folder to use its newest "
                             "intact state") from None
    find_state(path)  # the errors for a missing or empty folder
    problems: list[str] = []
    for folder in _state_folders(path):
        try:
            st = read_state(folder)
        except _Damaged as exc:
            problems.append(f"{folder.name}: {exc}")
            continue
        st.notes = [f"resume: {p}; passed over, resuming from {folder.name}, the newest intact state" for p in problems]
        return st
    raise StateError(f"--resume {files.display_path(path)}: every state in it is incomplete or damaged "
                     f"({'; '.join(problems)}); start the training again without --resume")


class _Damaged(Exception):
    """A state folder that fails a check; the message says which file and what is wrong."""


def _json(folder: Path, name: str, kind: type) -> Any:
    p = folder / name
    if not p.is_file():
        raise _Damaged(f"{name} is missing")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _Damaged(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(data, kind):
        raise _Damaged(f"{name} holds a {type(data).__name__}, not a {kind.__name__}")
    return data


def _tensors(folder: Path, name: str, finite: bool) -> dict[str, torch.Tensor]:
    try:
        return files.read_tensors(folder / name, check_finite=finite)[0]
    except SdloraError as exc:
        text = str(exc).split(": ", 1)[-1]
        raise _Damaged(f"{name}: {text}") from None


def _read_marker(folder: Path) -> dict:
    if not (folder / MARKER).is_file():
        raise _Damaged(f"{MARKER} is missing, so its save never finished (killed mid-write, or copied in part)")
    listed = _json(folder, MARKER, dict).get("files")
    if not isinstance(listed, dict) or not listed:
        raise _Damaged(f"{MARKER} lists no files")
    return listed


def _check_files(folder: Path, listed: dict) -> None:
    for name, info in listed.items():
        p = folder / str(name)
        if not p.is_file():
            raise _Damaged(f"{name} is missing")
        size = p.stat().st_size
        if not isinstance(info, dict) or size != info.get("bytes"):
            raise _Damaged(f"{name} is {size} bytes, the save wrote {info.get('bytes') if isinstance(info, dict) else '?'}"
                           " (truncated or changed)")
        if _sha256(p) != info.get("sha256"):
            raise _Damaged(f"{name} is not what the save wrote (its sha256 differs)")


def _check_trainer(trainer: dict, folder: Path) -> None:
    for key in ("step", "epoch", "position", "global_batch"):
        value = trainer.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _Damaged(f"trainer.json: {key!r} is {'missing' if value is None else repr(value)}, not a whole "
                           "number >= 0")
    if trainer.get("version") != STATE_VERSION:
        raise _Damaged(f"trainer.json: state version {trainer.get('version')} is not {STATE_VERSION} (written by "
                       "another sdlora version)")
    if not isinstance(trainer.get("config"), dict):
        raise _Damaged("trainer.json: 'config' is missing or not a table")
    m = _STATE_DIR.match(folder.name)
    if m and int(m.group(1)) != trainer["step"]:
        raise _Damaged(f"trainer.json says step {trainer['step']}, the folder is {folder.name}")


def _read_rng(folder: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = _tensors(folder, f"rng-{rank}.safetensors", False)
    plain = _json(folder, f"rng-{rank}.json", dict)
    numpy_state, python_state = plain.get("numpy"), plain.get("python")
    ok = ("torch" in tensors and tensors["torch"].dtype == torch.uint8 and isinstance(numpy_state, list)
          and len(numpy_state) == 5 and isinstance(numpy_state[1], list) and len(numpy_state[1]) == 624
          and isinstance(python_state, list) and len(python_state) == 3 and isinstance(python_state[1], list))
    if not ok:
        raise _Damaged(f"rng-{rank}: the random-generator state is incomplete")
    return tensors, plain


def read_state(folder: Path) -> State:
    """Check and read one state folder; raises _Damaged with what is wrong."""
    listed = _read_marker(folder)
    trainer = _json(folder, "trainer.json", dict)
    _check_trainer(trainer, folder)
    network = _tensors(folder, "adapter.safetensors", True)
    if not network:
        raise _Damaged("adapter.safetensors holds no tensors")
    opt_tensors = _tensors(folder, "optimizer.safetensors", True)
    meta = _json(folder, "optimizer.json", dict)
    if not isinstance(meta.get("param_groups"), list) or not isinstance(meta.get("state"), dict):
        raise _Damaged("optimizer.json has no param_groups / state")
    try:
        optimizer = _unflatten_optimizer(opt_tensors, meta)
    except (ValueError, AttributeError, TypeError) as exc:
        raise _Damaged(f"optimizer.json / optimizer.safetensors do not fit together ({exc})") from None
    scheduler = _json(folder, "scheduler.json", dict)
    world = trainer.get("world_size", 1)
    world = world if isinstance(world, int) and not isinstance(world, bool) and world > 0 else 1
    rngs = {rank: _read_rng(folder, rank) for rank in range(world)
            if rank == 0 or (folder / f"rng-{rank}.json").is_file()}
    _check_files(folder, listed)  # last: the checks above name the problem more precisely
    return State(folder, trainer, network, optimizer, scheduler, rngs)


def prune(output_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` latest state-N folders."""
    found = _state_folders(Path(output_dir))
    for p in found[keep:] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def set_aside(output_dir: Path, patterns: tuple[str, ...] = ()) -> Path | None:
    """Move the state-N folders of an earlier run in ``output_dir`` (and the files matching ``patterns``,
    e.g. its step adapters) into ``output_dir/earlier-run-<time>/``, so the folder holds one run's states.
    Returns that folder, or None when there was nothing to move."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    moving = _state_folders(output_dir) + sorted({p for pat in patterns for p in output_dir.glob(pat) if p.is_file()})
    if not moving:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = output_dir / f"earlier-run-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = output_dir / f"earlier-run-{stamp}-{n}"
    files.make_folder(aside)
    try:
        for p in moving:
            os.replace(p, aside / p.name)
    except OSError as exc:
        raise files.save_error(aside, exc) from None
    return aside
