"""Reading and writing safetensors files: the only place that touches adapter files on disk.

- ``read_tensors`` validates before it trusts: not a safetensors file, truncated, header too large,
  a pickle file (refused unless ``allow_pickle``; then loaded with ``weights_only=True``), NaN/Inf
  tensors. Each gives an ``AdapterFileError`` with a one-line cause and a hint.
- ``write_tensors`` is atomic: a temporary file beside the target, flushed and fsynced, then renamed over
  it. A crash or Ctrl+C mid-save leaves the previous file intact. The temporary file is named
  ``.<target name>.<pid>.<random>.tmp``, so the next run can remove those of killed processes
  (``streaming.clean_stale``). A write that fails (full disk, read-only file system, a file where a folder
  should be) raises ``SaveError`` naming the path and the cause, and leaves no temporary file.
- ``kohya_hashes`` computes ``sshs_model_hash`` / ``sshs_legacy_hash`` as kohya sd-scripts does.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from sdlora.errors import AdapterFileError, SdloraError
from sdlora.files import formats

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'fp16' / 'bf16' / 'fp32' (or a torch dtype) -> torch dtype; None stays None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise AdapterFileError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


class PickleRefused(AdapterFileError):
    """A pickle file refused because pickles were not allowed. The sentence names no flag: a caller that has
    one (``allow_pickle=``, ``--allow-pickle``) adds it with ``with_hint``."""

    def with_hint(self, hint: str) -> "PickleRefused":
        return PickleRefused(f"{self}, or {hint}")


def read_header(path: str | Path) -> tuple[dict, int]:
    """The safetensors JSON header of ``path`` and its length in bytes, validated against the file size."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such file; check the path")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterFileError(f"{path}: file is empty or truncated ({size} bytes); download or save it again")
        (n,) = struct.unpack("<Q", head)
        # A safetensors header length can start with a pickle's bytes (e.g. 0x80 as its low byte): only a file
        # that is not plausibly safetensors (length within the file, then a JSON object) is taken for a pickle.
        kind = formats.foreign_kind(path, head)
        # A safetensors header length can start with a pickle's bytes (e.g. 0x80 as its low byte): only a file
        # that is not plausibly safetensors (length within the file, then a JSON object) is taken for another format.
        if kind is not None and not (n <= MAX_HEADER and 8 + n <= size and f.read(1) == b"{"):
            if kind != "pickle":
                raise AdapterFileError(formats.foreign_sentence(path, kind))
            raise PickleRefused(
                f"{path}: this is a pickle (.ckpt/.pt) file, not safetensors; pickle files can run code when "
                "loaded, so sdlora refuses them by default. Convert it to .safetensors with the tool that made it")
        f.seek(8)
        if n > MAX_HEADER:
            raise AdapterFileError(f"{path}: not a safetensors file (header length {n} bytes is larger than the "
                                   f"{MAX_HEADER} byte limit); the file is corrupt or of another format")
        if 8 + n > size:
            raise AdapterFileError(f"{path}: truncated: the header says {n} bytes but the file holds {size}; "
                                   "download or save it again")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except RecursionError:  # a crafted header nested thousands of levels deep
        raise AdapterFileError(f"{path}: not a safetensors file (its header nests too deep to be a tensor "
                               "table); the file is corrupt or crafted") from None
    except (ValueError, UnicodeDecodeError):
        raise AdapterFileError(f"{path}: not a safetensors file (its header is not valid JSON); "
                               "the file is corrupt or of another format") from None
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        end = max(end, _data_end(path, key, info))
    if 8 + n + end > size:
        raise AdapterFileError(f"{path}: truncated: tensor data needs {8 + n + end} bytes but the file holds "
                               f"{size}; download or save it again")
    return header, n


def _data_end(path: Path, key: str, info: object) -> int:
    """The end offset of one tensor's data, checked: two whole numbers 0 <= begin <= end (JSON allows
    Infinity, NaN, fractions and huge numbers, which a crafted header may hold)."""
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2):
        raise AdapterFileError(f"{path}: not a valid safetensors file (tensor {key!r} has no data offsets)")
    begin, stop = offsets
    if not all(type(v) is int for v in offsets) or not 0 <= begin <= stop:
        raise AdapterFileError(f"{path}: not a valid safetensors file (tensor {key!r} has the data offsets "
                               f"{_short(offsets)}; they must be two whole numbers 0 <= begin <= end); the "
                               "file is corrupt or crafted")
    return stop


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (strings), without reading tensors."""
    header, _ = read_header(path)
    return dict(header.get("__metadata__") or {})


def read_tensors(path: str | Path, *, allow_pickle: bool = False, check_finite: bool = True
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of an adapter file (on the CPU) and its metadata.

    Raises AdapterFileError for every bad file named in the module docstring.
    """
    path = Path(path)
    try:
        header, _ = read_header(path)
    except AdapterFileError:
        if allow_pickle and path.is_file() and formats.foreign_kind(path, path.read_bytes()[:8]) == "pickle":
            return _read_pickle(path, check_finite)
        raise
    data = path.read_bytes()
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise AdapterFileError(f"{path}: not a valid safetensors file ({exc}); the file is corrupt") from None
    if check_finite:
        check_tensors_finite(path, tensors)
    return tensors, dict(header.get("__metadata__") or {})


def _read_pickle(path: Path, check_finite: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterFileError(f"{path}: cannot be read as a weights-only pickle ({type(exc).__name__}); "
                               "convert it to safetensors with the tool that made it") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AdapterFileError(f"{path}: the pickle holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if check_finite:
        check_tensors_finite(path, tensors)
    return tensors, {}


def check_tensors_finite(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    # torch has no isfinite for 8-bit floats: those are checked upcast
    bad = [k for k, t in tensors.items() if t.is_floating_point()
           and not torch.isfinite(t.float() if t.element_size() == 1 else t).all()]
    if bad:
        raise AdapterFileError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values (e.g. {bad[0]}); the "
                               "adapter is broken — retrain or use an earlier checkpoint of it")


class SaveError(SdloraError):
    """A file or folder that cannot be written: the message names the path and the cause."""


# errno values that say "this cannot be written here", whatever the write was
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG}
_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose an output folder on another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another output folder",
    errno.EROFS: "the file system is read-only; choose an output folder on a writable disk",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another output folder",
    errno.EEXIST: "a file is in the way of a folder; move it or choose another output folder",
}


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (e.g. b'caf\\xe9.png') shown as \\xe9."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def save_error(path: str | Path, exc: OSError) -> SaveError:
    """The SaveError sentence for an OSError met while writing ``path``."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0, "check the folder and the disk")
    return SaveError(f"cannot write {display_path(path)}: {cause}; {hint}")


def is_write_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p folder``, or a SaveError naming the folder and the cause."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise save_error(folder, exc) from None
    if not folder.is_dir():
        raise save_error(folder, FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST)))
    return folder


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed over ``target``.
    On any error (or KeyboardInterrupt) the temporary file is removed and ``target`` is untouched; an
    OSError of writing (full disk, read-only, ...) becomes a SaveError naming ``target``."""
    target = Path(target)
    make_folder(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise save_error(target, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, _new_file_mode(target))  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if is_write_error(exc):
            raise save_error(target, exc) from None
        raise


def _new_file_mode(target: Path) -> int:
    """The existing target's permissions, else 0666 less the process umask."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``tensors`` (contiguous CPU copies) with string metadata."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return st_save(clean, metadata=meta or None)


def kohya_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya computes them.

    Only the ``ss_*`` metadata is kept for the computation (so user metadata does not change the hash):
    model hash = sha256 hex of the tensor-data section (the bytes after the header); legacy hash = the
    first 8 hex digits of sha256 of bytes 0x100000..0x110000 of that serialised file.
    """
    data = serialize(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return data_section_sha256(data), legacy_hash(data)


def data_section_sha256(data: bytes) -> str:
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()


def legacy_hash(data: bytes) -> str:
    return hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                  *, dtype: torch.dtype | str | None = None, hashes: bool = True) -> dict[str, str]:
    """Write ``tensors`` atomically as safetensors; floating tensors cast to ``dtype`` when given.

    With ``hashes`` the kohya hashes are added to the metadata. Returns the metadata written.
    """
    dtype = parse_dtype(dtype)
    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if hashes:
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = kohya_hashes(out, meta)
    atomic_write_bytes(path, serialize(out, meta))
    return meta


def short_hash(path: str | Path) -> str:
    """The 12-hex-digit hash A1111 shows for an adapter (sha256 of the tensor data of the file)."""
    data = Path(path).read_bytes()
    try:
        return data_section_sha256(data)[:12]
    except struct.error:
        return hashlib.sha256(data).hexdigest()[:12]

