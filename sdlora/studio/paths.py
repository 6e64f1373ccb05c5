"""Every path the studio API takes is relative to the root, resolved, and must stay inside it.

``inside(root, text)`` refuses absolute paths, ``..`` parts, NUL bytes and symlinks whose target leaves
the root, with ``PathRefused`` (HTTP 403). The embedded default model is the one place outside the root
that may be read: the API names it ``default``.
"""
from __future__ import annotations

import os
from pathlib import Path

from sdlora.errors import SdloraError
from sdlora.models.configs import DEFAULT_MODEL

DEFAULT_NAME = "default"  # how the API names the embedded default model
STATE_DIR = ".sdlora-studio"  # the studio's own files under the root
SKIP_DIRS = {STATE_DIR, ".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", "cache", "logs"}


class PathRefused(SdloraError):
    """A path that leaves the studio root (HTTP 403)."""

    def __init__(self, message: str, field: str = "path"):
        super().__init__(message)
        self.field = field


class NotFound(SdloraError):
    """A file or folder the request names does not exist (HTTP 404)."""

    def __init__(self, message: str, field: str = "path"):
        super().__init__(message)
        self.field = field


def inside(root: Path, text: str, *, field: str = "path", must_exist: bool = False) -> Path:
    """``text`` (relative to ``root``) as a resolved absolute path inside ``root``; raises PathRefused."""
    if not isinstance(text, str) or "\x00" in text:
        raise PathRefused(f"{field}: not a usable path", field)
    p = Path(text)
    if p.is_absolute() or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise PathRefused(f"{field} = {text!r}: absolute paths are refused; give a path relative to the "
                          "studio root", field)
    if ".." in p.parts:
        raise PathRefused(f"{field} = {text!r}: '..' is refused; give a path inside the studio root", field)
    full = (root / p).resolve()
    if full != root and root not in full.parents:
        raise PathRefused(f"{field} = {text!r} leads outside the studio root (through a symlink); it is "
                          "refused", field)
    if must_exist and not full.exists():
        raise NotFound(f"{field} = {text!r}: no such file or folder under the studio root", field)
    return full


def model_path(root: Path, text: str, field: str = "model.path") -> Path:
    """A model path: ``default`` (the embedded default model) or a path inside the root."""
    if text == DEFAULT_NAME:
        return DEFAULT_MODEL.resolve()
    return inside(root, text, field=field)


def relative(root: Path, path: str | Path) -> str:
    """How the API shows ``path``: relative to the root, ``default`` for the embedded model, else as is."""
    full = Path(path).resolve()
    if full == DEFAULT_MODEL.resolve():
        return DEFAULT_NAME
    try:
        return full.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


def walk(root: Path, start: Path, max_depth: int = 6):
    """(folder, file names) under ``start``, skipping hidden and studio folders; never follows symlinks."""
    base_depth = len(start.parts)
    for folder, dirs, files in os.walk(start, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not (here / d).is_symlink() and len(here.parts) - base_depth < max_depth)
        yield here, sorted(files)
