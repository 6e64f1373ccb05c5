"""What a file that is not safetensors is, told from its first bytes: a pickle, a torch save (a zip archive
holding ``data.pkl``), another zip archive, a NumPy array (.npy). ``read_header`` uses it so that the error
sentence names the format the user actually has, and calls a file "pickle" only when it is one."""
from __future__ import annotations

import zipfile
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
PICKLE_PROTOCOL = b"\x80"  # the first byte of a pickle of protocol 2 or later


def is_torch_zip(path: str | Path) -> bool:
    """True when ``path`` is a zip archive holding a ``data.pkl`` entry (what ``torch.save`` writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def foreign_kind(path: str | Path, head: bytes) -> str | None:
    """"pickle" (a raw pickle or a torch save), "npy", "zip" (not a torch save) or None, from the first bytes."""
    if head[:6] == NPY_MAGIC:
        return "npy"
    if head[:4] == ZIP_MAGIC:
        return "pickle" if is_torch_zip(path) else "zip"
    if head[:1] == PICKLE_PROTOCOL:
        return "pickle"
    return None


def foreign_sentence(path: str | Path, kind: str) -> str:
    """The error sentence for a non-pickle foreign file (kind "npy" or "zip")."""
    if kind == "npy":
        return (f"{path}: this is a NumPy array file (.npy), not safetensors; an adapter is a .safetensors file "
                "of named tensors. Save the arrays with safetensors (safetensors.numpy.save_file) first")
    return (f"{path}: this is a zip archive (not a torch save), not safetensors; unpack it and use the "
            ".safetensors file inside")
