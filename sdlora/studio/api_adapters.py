"""Adapters: every ``.safetensors`` adapter under the root with ``sdlora inspect``'s facts and its last samples."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from sdlora.commands.actions.inspect import inspect_file
from sdlora.errors import SdloraError
from sdlora.studio.context import studio_of
from sdlora.studio.paths import NotFound, inside, relative, walk

router = APIRouter(tags=["adapters"])
_cache: dict[tuple[str, int, int], dict[str, Any]] = {}
_lock = threading.Lock()
SAMPLES_SHOWN = 6


def adapter_files(root: Path) -> list[Path]:
    """``.safetensors`` files under the root, outside model folders and trainer state folders."""
    out = []
    for folder, files in walk(root, root):
        if (folder / "model_index.json").is_file() or folder.name.startswith("state-") or \
                any((p / "model_index.json").is_file() for p in folder.parents if p != root and root in p.parents):
            continue
        out += [folder / n for n in files if n.endswith(".safetensors")]
    return out


def facts(path: Path) -> dict[str, Any]:
    """``inspect_file``'s facts for ``path`` (cached per file version), or {"error": sentence}."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        info = inspect_file(path)
    except SdloraError as exc:
        info = {"error": str(exc)}
    with _lock:
        _cache[key] = info
    return info


def samples_of(root: Path, adapter: Path) -> list[str]:
    """The newest sample images of the training that wrote ``adapter`` (its folder's samples/)."""
    folder = adapter.parent / "samples"
    if not folder.is_dir():
        return []
    images = sorted(folder.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name))
    return [relative(root, p) for p in images[-SAMPLES_SHOWN:]]


def _entry(root: Path, path: Path) -> dict[str, Any]:
    info = dict(facts(path))
    info["path"] = relative(root, path)
    return {"name": path.stem, "path": relative(root, path), "modified": path.stat().st_mtime,
            "facts": info, "samples": samples_of(root, path)}


@router.get("/api/adapters")
def list_adapters(request: Request) -> list[dict[str, Any]]:
    """Every adapter file under the root, newest first."""
    root = studio_of(request).root
    entries = [_entry(root, p) for p in adapter_files(root)]
    return sorted(entries, key=lambda e: -e["modified"])


@router.get("/api/adapters/info")
def adapter_info(request: Request, path: str) -> dict[str, Any]:
    root = studio_of(request).root
    p = inside(root, path, must_exist=True)
    if not p.is_file() or p.suffix != ".safetensors":
        raise NotFound(f"path = {path!r} is not a .safetensors file")
    return _entry(root, p)
