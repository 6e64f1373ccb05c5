"""Robust image decoding and the per-sample transform to a bucket.

``decode(path, alpha_mode, background)`` returns an RGB image (and a loss mask from transparency when
asked) or raises ``BadImage`` with a one-line reason: empty file, not an image, corrupt/truncated data.
What it handles: EXIF orientation; RGBA/LA/palette transparency composited on a background colour or
kept as a mask; CMYK, palette, LA, grayscale, 1-bit and 16-bit/float modes converted to 8-bit RGB.

``to_bucket(image, mask, bucket, crop, flip, rng)`` resizes an image to cover its bucket, crops (centre
or random) and flips, and returns pixels in [-1, 1] of shape (3, H, W) with the SDXL size conditioning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason, e.g. 'corrupt or truncated'."""


@dataclass
class Decoded:
    image: Image.Image  # RGB
    mask: Image.Image | None  # L, 255 = counts in the loss; None when the image has no transparency


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit integer and float single-channel images scaled to 8-bit grayscale."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
    elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def decode(path: str | Path, alpha_mode: str = "background", background: str = "white") -> Decoded:
    """Open ``path`` as an RGB image; see the module docstring. Raises BadImage."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
    except OSError as exc:
        raise BadImage(f"cannot be read ({exc.strerror or exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency and EXIF warnings: handled below
            with Image.open(path) as opened:
                opened.load()
                img = opened
                try:
                    img = ImageOps.exif_transpose(opened)
                except Exception:  # a broken EXIF block: keep the pixels as stored
                    img = opened.copy()
                if img is opened:
                    img = opened.copy()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt or truncated ({exc})") from None
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    mask = None
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema() != (255, 255):
            bg = Image.new("RGBA", rgba.size, ImageColor.getrgb(background)[:3] + (255,))
            img = Image.alpha_composite(bg, rgba).convert("RGB")
            mask = alpha if alpha_mode == "mask" else None
        else:
            img = rgba.convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")  # CMYK, P, L, 1, YCbCr, LAB, HSV
    if min(img.size) < 1:
        raise BadImage("has no pixels")
    return Decoded(img, mask)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF rotation applied) without decoding the pixels."""
    with Image.open(path) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


@dataclass
class Sample:
    """One image fitted to its bucket."""

    pixels: torch.Tensor  # (3, H, W) float32 in [-1, 1]
    mask: torch.Tensor | None  # (1, H, W) float32 in [0, 1]
    original_size: tuple[int, int]  # (height, width) of the decoded image
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image


def crop_box(size: tuple[int, int], bucket: tuple[int, int], crop: str, rng: np.random.Generator | None
             ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized width, height), (left, top)) for an image of ``size`` covering ``bucket`` (w, h)."""
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if crop == "random" and rng is not None:
        left, top = int(rng.integers(0, nw - bw + 1)), int(rng.integers(0, nh - bh + 1))
    else:
        left, top = (nw - bw) // 2, (nh - bh) // 2
    return (nw, nh), (left, top)


def to_bucket(decoded: Decoded, bucket: tuple[int, int], crop: str = "center", flip: bool = False,
              rng: np.random.Generator | None = None) -> Sample:
    """Resize ``decoded`` to cover ``bucket`` (w, h), crop it there, flip it when asked."""
    img = decoded.image
    (nw, nh), (left, top) = crop_box(img.size, bucket, crop, rng)
    bw, bh = bucket
    box = (left, top, left + bw, top + bh)
    pixels = _tensor(img.resize((nw, nh), Image.LANCZOS).crop(box)) / 127.5 - 1.0
    mask = None
    if decoded.mask is not None:
        mask = _tensor(decoded.mask.resize((nw, nh), Image.BILINEAR).crop(box)) / 255.0
    if flip:
        pixels = pixels.flip(-1)
        mask = mask.flip(-1) if mask is not None else None
        left = nw - bw - left
    return Sample(pixels, mask, (img.size[1], img.size[0]), (top, left))


def _tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

