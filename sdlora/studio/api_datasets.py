"""Datasets: image folders under the root, captions, the trainer's scan report, uploads, files, thumbnails."""
from __future__ import annotations

import re
from urllib.parse import quote
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from sdlora.files.images import IMAGE_EXTENSIONS, BadImage, decode, image_size
from sdlora.files.tensors import atomic_write_bytes
from sdlora.studio.context import Conflict, Invalid, THUMB_SIZES, studio_of
from sdlora.studio.paths import NotFound, inside, relative, walk
from sdlora.trainers import buckets as bucketing
from sdlora.trainers.config import config_from_dict
from sdlora.trainers.data import CAPTION_EXTENSIONS, read_caption, scan

router = APIRouter(tags=["datasets"])
_KOHYA = re.compile(r"^(\d+)_(.+)$")
_NAME = re.compile(r"^[\w][\w .()+-]{0,120}$")
MAX_CAPTION = 10_000
SERVED = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def _images(names: list[str]) -> list[str]:
    return [n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not n.startswith(".")]


def _folder(request: Request, path: str) -> Path:
    folder = inside(studio_of(request).root, path, must_exist=True)
    if not folder.is_dir():
        raise NotFound(f"path = {path!r} is not a folder")
    return folder


@router.get("/api/datasets")
def list_datasets(request: Request) -> list[dict[str, Any]]:
    """Every folder under the root that holds images directly, with counts and kohya ``N_name`` repeats."""
    root = studio_of(request).root
    out = []
    for folder, files in walk(root, root):
        images = _images(files)
        if not images or folder.name == "samples":
            continue
        captioned = sum(1 for n in images if any((folder / (Path(n).stem + e)).is_file() for e in CAPTION_EXTENSIONS))
        m = _KOHYA.match(folder.name)
        out.append({"path": relative(root, folder), "images": len(images), "captioned": captioned,
                    "repeats": int(m.group(1)) if m else None, "kohya_name": m.group(2) if m else None})
    return out


@router.get("/api/datasets/images")
def list_images(request: Request, path: str = Query(..., description="folder relative to the root")
                ) -> dict[str, Any]:
    """The images of one folder with their captions, sizes and thumbnail addresses."""
    root = studio_of(request).root
    folder = _folder(request, path)
    items = []
    for name in _images(sorted(p.name for p in folder.iterdir() if p.is_file())):
        p = folder / name
        try:
            w, h = image_size(p)
        except Exception:  # a file Pillow cannot open: listed, and named by the scan report
            w = h = None
        rel = relative(root, p)
        items.append({"name": name, "path": rel, "caption": read_caption(p, ".txt"), "width": w, "height": h,
                      "thumb": f"/api/thumb?path={quote(rel)}&size=128"})
    m = _KOHYA.match(folder.name)
    return {"path": relative(root, folder), "images": items, "repeats": int(m.group(1)) if m else None}


class CaptionBody(BaseModel):
    path: str = Field(..., description="the image, relative to the root")
    caption: str = Field(..., max_length=MAX_CAPTION)


@router.put("/api/datasets/caption")
def put_caption(request: Request, body: CaptionBody) -> dict[str, Any]:
    """Write the caption beside the image (``<stem>.txt``, or its existing ``.caption``), atomically."""
    image = inside(studio_of(request).root, body.path, must_exist=True)
    if image.suffix.lower() not in IMAGE_EXTENSIONS or not image.is_file():
        raise Invalid(f"path = {body.path!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if "\x00" in body.caption:
        raise Invalid("caption holds a NUL character; captions are plain text")
    target = image.with_name(image.stem + ".txt")
    other = image.with_name(image.stem + ".caption")
    if not target.is_file() and other.is_file():
        target = other
    text = body.caption.strip()
    atomic_write_bytes(target, (text + "\n").encode("utf-8") if text else b"")
    return {"path": body.path, "caption_file": relative(studio_of(request).root, target),
            "caption": read_caption(image, ".txt")}


@router.get("/api/datasets/scan")
def scan_report(request: Request, path: str, trigger: str = "", resolution: int = 512, bucket_step: int = 64,
                bucket_min_side: int = 256, bucket_max_side: int = 1024, min_image_side: int = 64,
                buckets: bool = True) -> dict[str, Any]:
    """The trainer's own scan (``trainers.data.scan`` + ``buckets.assign``): usable images per subset, skipped
    files with the reason, images without captions, and the aspect buckets with their counts."""
    root = studio_of(request).root
    folder = _folder(request, path)
    raw = {"model": {"path": "default"},
           "dataset": {"path": str(folder), "trigger": trigger, "resolution": resolution, "buckets": buckets,
                       "bucket_step": bucket_step, "bucket_min_side": bucket_min_side,
                       "bucket_max_side": bucket_max_side, "min_image_side": min_image_side}}
    cfg = config_from_dict(raw, base_dir=root)
    ds = scan(cfg.dataset)
    bucketing.assign(ds, cfg.dataset, cfg.resolution)
    counts: dict[tuple[int, int], int] = {}
    for it in ds.items:
        counts[it.bucket] = counts.get(it.bucket, 0) + 1
    rep = ds.report
    return {
        "path": relative(root, folder),
        "subsets": [{"path": relative(root, s.path), "repeats": s.repeats, "images": sum(1 for it in ds.items
                     if it.subset == i), "is_reg": s.is_reg} for i, s in enumerate(ds.subsets)],
        "usable": len(ds.items),
        "skipped": [{"path": relative(root, p), "reason": why} for p, why in rep.skipped],
        "no_caption": [relative(root, p) for p in rep.no_caption],
        "duplicates": [{"kept": relative(root, a), "skipped": relative(root, b)} for a, b in rep.duplicates],
        "ignored_folders": [relative(root, p) for p in rep.ignored_folders],
        "buckets": [{"width": w, "height": h, "images": n} for (w, h), n in sorted(counts.items())],
        "report": rep.format() + "\n" + bucketing.report(ds),
    }


@router.post("/api/datasets/upload")
async def upload(request: Request, folder: str, name: str) -> dict[str, Any]:
    """Add one image (the raw file as the request body, at most 20 MB) to ``folder`` as ``name``. It is
    decoded with the trainer's robust decoder first; a file that fails is refused and nothing is written."""
    root = studio_of(request).root
    target_dir = _folder(request, folder)
    if not _NAME.match(name) or Path(name).name != name:
        raise Invalid(f"name = {name!r} is not allowed: use a plain file name such as cat-01.png", "name")
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        raise Invalid(f"name = {name!r}: the type is not an image type the trainer reads "
                          f"({', '.join(IMAGE_EXTENSIONS)})", "name")
    target = target_dir / name
    if target.exists():
        raise Conflict(f"{relative(root, target)} already exists; choose another name", "name")
    data = await request.body()
    with tempfile.TemporaryDirectory(dir=studio_of(request).state) as tmp:
        probe = Path(tmp) / name
        probe.write_bytes(data)
        try:
            decoded = decode(probe)
        except BadImage as exc:
            raise Invalid(f"{name}: {exc}; nothing was saved", "file") from None
    atomic_write_bytes(target, data)
    w, h = decoded.image.size
    return {"path": relative(root, target), "width": w, "height": h, "bytes": len(data)}


@router.get("/api/files")
def get_file(request: Request, path: str) -> FileResponse:
    """An image file under the root (samples, generated images, dataset images)."""
    p = inside(studio_of(request).root, path, must_exist=True)
    if not p.is_file() or p.suffix.lower() not in SERVED:
        raise NotFound(f"path = {path!r} is not an image file the studio serves ({', '.join(SERVED)})")
    return FileResponse(p)


@router.get("/api/thumb")
def get_thumb(request: Request, path: str, size: int = 128) -> FileResponse:
    """A cached PNG thumbnail (made once per file version and size)."""
    studio = studio_of(request)
    if size not in THUMB_SIZES:
        raise Invalid(f"size = {size} is not allowed: use one of {', '.join(map(str, THUMB_SIZES))}", "size")
    p = inside(studio.root, path, must_exist=True)
    if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise NotFound(f"path = {path!r} is not an image file")
    try:
        thumb = studio.thumbnail(p, size)
    except BadImage as exc:
        raise Invalid(f"{path}: {exc}") from None
    return FileResponse(thumb, headers={"Cache-Control": "max-age=3600"})
