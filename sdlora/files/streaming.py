"""Streaming safetensors IO for whole models: write a file tensor by tensor, read one lazily.

A base model is gigabytes; saving or baking it must not hold a second copy in memory. ``write_streamed``
writes the safetensors header first (it only needs each tensor's name, dtype and shape) and then asks a
producer for each tensor in turn, so at most one output tensor exists at a time. ``LazyFile`` reads a
safetensors file one tensor at a time (``safe_open``). Both sides are atomic: a temporary file (or folder)
beside the target is renamed over it only when complete; ``clean_stale`` removes (or, for a swap cut between
its renames, puts back) what a killed save left behind.

Writing gigabytes durably costs what the disk needs to store them; ``write_streamed`` hides most of it behind
the producers' work: every ``WRITEBACK_BYTES`` it asks the kernel to start writing what it has written so far
(``posix_fadvise(DONTNEED)`` on dirty pages starts their write-back and returns), so the fsync before the
rename finds little left to do. Small tensors (norms, biases) reach the file through a ``BUFFER_BYTES``
buffer rather than one system call each, and the next tensor is produced in a worker thread while the
current one is written.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open

from sdlora.errors import ModelError
from sdlora.files.tensors import fsync_dir, atomic_path, display_path, is_write_error, make_folder, save_error

ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES: dict[str, torch.dtype] = {v: k for k, v in ST_DTYPES.items()}
WRITEBACK_BYTES = 16 << 20  # start the disk writing this often
BUFFER_BYTES = 1 << 20  # gather smaller writes into writes of this size


@dataclass
class Item:
    """One tensor to write: its name, dtype and shape up front, its data from ``produce()`` later."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n * torch.empty((), dtype=self.dtype).element_size()


def _header(items: list[Item], metadata: dict[str, str] | None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for item in items:
        if item.dtype not in ST_DTYPES:
            raise ModelError(f"cannot write tensor {item.name} of dtype {item.dtype} to safetensors")
        header[item.name] = {"dtype": ST_DTYPES[item.dtype], "shape": list(item.shape),
                             "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def write_streamed(path: str | Path, items: Iterable[Item], metadata: dict[str, str] | None = None, *,
                   sha256: bool = False) -> str | None:
    """Write ``items`` as one safetensors file, atomically, producing one tensor at a time.

    Each produced tensor must have the item's shape; it is cast to the item's dtype. With ``sha256``, returns
    the sha256 hex of the whole file (A1111's model hash is its first 10 digits), computed while writing;
    else None (hashing gigabytes takes seconds; ``files.file_sha256`` gives it later, on demand)."""
    items = list(items)
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in a streamed write")
    head = _header(items, metadata)
    digest = hashlib.sha256() if sha256 else None
    with atomic_path(path) as tmp:
        # "r+b": the temporary file exists, empty. Opening it with "wb" would truncate it, and ext4 then writes
        # the whole file out synchronously when it is closed (its replace-by-truncate heuristic).
        with open(tmp, "r+b", buffering=BUFFER_BYTES) as f:
            out = _Output(f, digest)
            out.write(head)
            # One tensor ahead: a worker thread produces tensor k+1 (reading it, folding adapters in) while this
            # thread writes tensor k, so the producers' work and the disk's overlap; at most two produced
            # tensors exist at once. Producers run one at a time, in order, so they need no locking.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdlora-produce") as pool:
                pending = pool.submit(items[0].produce) if items else None
                for k, item in enumerate(items):
                    t = pending.result()
                    pending = pool.submit(items[k + 1].produce) if k + 1 < len(items) else None
                    if tuple(t.shape) != tuple(item.shape):
                        raise ValueError(f"{item.name}: produced shape {tuple(t.shape)}, announced {item.shape}")
                    out.write(_tensor_bytes(t.to(item.dtype)))
                    del t
    return digest.hexdigest() if digest is not None else None


class _Output:
    """A file being written: optional running hash, and write-back started every ``WRITEBACK_BYTES``."""

    def __init__(self, f: BinaryIO, digest: Any = None):
        self.f, self.digest = f, digest
        self.written = self.flushed = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        if self.digest is not None:
            self.digest.update(data)
        self.written += len(data)
        if self.written - self.flushed >= WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
            self.f.flush()
            with contextlib.suppress(OSError):  # only a hint: the fsync at the end writes whatever is left
                os.posix_fadvise(self.f.fileno(), self.flushed, self.written - self.flushed,
                                 os.POSIX_FADV_DONTNEED)
            self.flushed = self.written


class LazyFile:
    """A safetensors file read one tensor at a time: names, shapes, dtypes and metadata without the data."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._f = safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{self.path}: not a readable safetensors file ({exc}); check the path, or "
                             "download or save the model again") from None
        self.metadata: dict[str, str] = dict(self._f.metadata() or {})
        self.keys: list[str] = list(self._f.keys())
        self._set = set(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._set

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        return TORCH_DTYPES.get(self._f.get_slice(key).get_dtype(), torch.float32)

    def get(self, key: str) -> torch.Tensor:
        return self._f.get_tensor(key)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target`` (see
    ``replace_folder``). On error the temporary folder is removed and ``target`` is untouched."""
    target = Path(target)
    make_folder(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise save_error(target, exc) from None
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the mode a plain mkdir would
        replace_folder(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_error(exc):
            raise save_error(target, exc) from None
        raise


def replace_folder(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` to ``target``. An existing ``target`` is first renamed to
    ``.<name>.old-<pid>`` and removed after; a kill between the two renames leaves that hidden copy, which
    ``clean_stale`` puts back on the next run, so ``target`` is never lost."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if old.exists():
            _remove(old)
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# .NAME.PID.RANDOM.tmp (atomic_path / atomic_folder), .NAME.tmp-PID (training states), .NAME.old-PID (swaps)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$|^\.(?P<sname>.+)\.tmp-(?P<spid>\d+)$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale(folder: str | Path, names: Callable[[str], bool] | None = None) -> list[str]:
    """Tidy what killed saves left in ``folder``: temporary files and folders of processes that no longer
    run are removed, and a ``.NAME.old-PID`` copy of a swap that was cut between its renames is renamed
    back to NAME (or removed when NAME is there). ``names`` limits it to targets whose name it accepts.
    Returns one sentence per thing done (for the caller to print)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done: list[str] = []
    for entry in sorted(folder.iterdir()):
        temp, old = _TEMP.match(entry.name), _OLD.match(entry.name)
        if temp is not None:
            name, pid = temp.group("name") or temp.group("sname"), int(temp.group("pid") or temp.group("spid"))
        elif old is not None:
            name, pid = old.group("name"), int(old.group("pid"))
        else:
            continue
        if (names is not None and not names(name)) or pid_alive(pid):
            continue
        shown = display_path(entry)
        if old is not None and not (folder / name).exists():
            os.replace(entry, folder / name)
            done.append(f"restored {display_path(folder / name)} from {shown}: a save by process {pid} was "
                        "killed between its two renames")
            continue
        _remove(entry)
        what = "the old copy of a finished swap" if old is not None else "the temporary file of a killed save"
        done.append(f"removed {shown}: {what} (process {pid}, no longer running)")
    return done
