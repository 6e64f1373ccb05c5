"""What the API modules share: the root, the job store and runner, the generation worker, the thumbnails."""
from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import Request

from sdlora.errors import SdloraError
from sdlora.studio.paths import STATE_DIR
from sdlora.studio.runner import Runner
from sdlora.studio.store import JobStore

THUMB_SIZES = (64, 128, 256)


class Conflict(SdloraError):
    """The request clashes with what exists (HTTP 409)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Invalid(SdloraError):
    """A request value that is not allowed (HTTP 422); ``field`` names it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Studio:
    def __init__(self, root: Path):
        if not root.is_dir():
            raise SdloraError(f"--root {root}: no such folder")
        self.root = root
        self.state = root / STATE_DIR
        self.state.mkdir(exist_ok=True)
        self.store = JobStore(self.state / "studio.db")
        self.runner = Runner(root, self.store)
        self._generator = None

    @property
    def generator(self):
        from sdlora.studio.generator import GenerateWorker

        if self._generator is None:
            self._generator = GenerateWorker()
        return self._generator

    def thumbnail(self, image: Path, size: int) -> Path:
        """A PNG thumbnail of ``image`` (longest side ``size``), made once and cached under the state folder."""
        from PIL import Image

        from sdlora.files.images import decode

        st = image.stat()
        key = hashlib.sha1(f"{image}|{st.st_mtime_ns}|{st.st_size}|{size}".encode()).hexdigest()
        path = self.state / "thumbs" / f"{key}.png"
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            img = decode(image).image
            img.thumbnail((size, size), Image.Resampling.NEAREST if max(img.size) <= size else Image.Resampling.LANCZOS)
            tmp = path.with_suffix(".tmp")
            img.save(tmp, format="PNG")
            tmp.replace(path)
        return path

    def close(self) -> None:
        self.runner.shutdown()
        if self._generator is not None:
            self._generator.close()
        self.store.close()


def studio_of(request: Request) -> Studio:
    return request.app.state.studio
