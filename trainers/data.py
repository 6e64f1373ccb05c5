"""The training images: folder scan, captions, and the report shown before training.

``scan(section)`` turns the [dataset] config into a ``Dataset``: its subsets (each image folder with its
own settings; kohya's ``N_name`` sub-folders become subsets repeated N times), the usable images with
their captions and sizes, and a ``DataReport`` of everything that was skipped and why. Every image is
decoded once here, so a corrupt, empty, unreadable or too small file is listed at the start and never
reaches the training loop.

Captions: ``<stem><caption_extension>`` beside the image, else ``<stem>.txt`` / ``<stem>.caption``. An
image without one uses the subset's fallback caption, else the kohya folder name (``10_sks dog`` ->
``sks dog``), else the class token. The trigger word is put first in every training caption that does not
already hold it (never in regularisation captions).
"""
from __future__ import annotations

import collections
import errno
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.errors import SdloraError
from sdlora.trainers.config import DatasetSection, SubsetSection
from sdlora.files.images import IMAGE_EXTENSIONS, BadImage, decode
from sdlora.files.tensors import display_path

_KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")
CAPTION_EXTENSIONS = (".txt", ".caption")


class DatasetError(SdloraError):
    """The dataset cannot be trained on (no folder, no usable image)."""


@dataclass
class Subset:
    """One image folder with its resolved settings."""

    path: Path
    name: str  # folder name, e.g. "10_sks dog"
    is_reg: bool
    repeats: int
    trigger: str
    class_token: str
    folder_caption: str  # kohya "N_name" -> "name"; "" otherwise
    caption_extension: str
    fallback_caption: str
    loss_weight: float
    flip: bool
    crop: str
    alpha_mode: str
    shuffle_captions: bool
    keep_tokens: int
    caption_dropout: float
    tag_dropout: float


@dataclass
class Item:
    """One usable image."""

    path: Path
    subset: int  # index into Dataset.subsets
    caption: str  # the caption body (without the trigger)
    trigger: str  # put first in the caption ("" for none)
    size: tuple[int, int]  # (width, height), EXIF rotation applied
    has_alpha_mask: bool = False
    bucket: tuple[int, int] = (0, 0)  # (width, height), set by buckets.assign
    _digest: str = ""

    def digest(self) -> str:
        """sha256 of the file's bytes (computed once)."""
        if not self._digest:
            self._digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return self._digest


@dataclass
class DataReport:
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (kept, skipped)
    no_caption: list[Path] = field(default_factory=list)
    ignored_folders: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # subset name -> usable images

    def format(self, limit: int = 20) -> str:
        lines = []
        for name, n in self.counts.items():
            lines.append(f"  {name}: {n} images")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} files:")
            lines += [f"    {p}: {why}" for p, why in self.skipped[:limit]]
            if len(self.skipped) > limit:
                lines.append(f"    ... and {len(self.skipped) - limit} more")
        if self.duplicates:
            lines.append(f"  {len(self.duplicates)} images share a name (and so a caption file) with another; "
                         "only the first is used:")
            lines += [f"    {b.name} (kept {a.name}) in {a.parent}" for a, b in self.duplicates[:limit]]
        if self.no_caption:
            lines.append(f"  {len(self.no_caption)} images have no caption file; they use the fallback "
                         "caption (dataset.fallback_caption, the N_name folder name, or dataset.class_token):")
            lines += [f"    {p}" for p in self.no_caption[:limit]]
            if len(self.no_caption) > limit:
                lines.append(f"    ... and {len(self.no_caption) - limit} more")
        if self.ignored_folders:
            lines.append("  folders ignored (not named N_name, e.g. 10_sks dog): "
                         + ", ".join(str(p) for p in self.ignored_folders[:limit]))
        return display_path("\n".join(lines))  # file names that are not UTF-8 print as \xNN


@dataclass
class Dataset:
    subsets: list[Subset]
    items: list[Item]
    report: DataReport
    bucket_note: str = ""  # how the bucket step was chosen (buckets.assign)
    lost: dict[int, str] = field(default_factory=dict)  # item index -> why it became unusable after the scan

    def lose(self, index: int, why: str) -> str:
        """Mark item ``index`` unusable for the rest of the run; returns the line to print. Raises
        DatasetError when no training image is left."""
        self.lost[index] = why
        self.report.skipped.append((self.items[index].path, why))
        left = [i for i in self.train_items() if i not in self.lost and self.items[i].path.is_file()]
        if not left:
            raise DatasetError(f"no training image is left: {display_path(self.items[index].path)} and every other "
                               "training image became unreadable or was deleted after the scan; put the images "
                               "back")
        return self.lost_line(index)

    def lost_line(self, index: int) -> str:
        return display_path(f"skipped {self.items[index].path}: {self.lost[index]} (it became unusable after the "
                            "scan; training goes on without it)")

    def train_items(self) -> list[int]:
        return [i for i, it in enumerate(self.items) if not self.subsets[it.subset].is_reg]

    def reg_items(self) -> list[int]:
        return [i for i, it in enumerate(self.items) if self.subsets[it.subset].is_reg]

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """{subset folder name: {tag: count}} as kohya's ss_tag_frequency."""
        out: dict[str, collections.Counter] = {}
        for it in self.items:
            sub = self.subsets[it.subset]
            tags = [t.strip() for t in full_caption(it).split(",") if t.strip()]
            out.setdefault(sub.name, collections.Counter()).update(tags)
        return {k: dict(v) for k, v in out.items()}

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """{subset folder name: {"n_repeats", "img_count"}} as kohya's ss_dataset_dirs."""
        counts = collections.Counter(it.subset for it in self.items)
        return {s.name: {"n_repeats": s.repeats, "img_count": counts.get(i, 0)}
                for i, s in enumerate(self.subsets) if not s.is_reg}


def full_caption(item: Item) -> str:
    """The caption as stored: trigger first, then the caption body."""
    return ", ".join(p for p in (item.trigger, item.caption) if p)


def _pick(value, default):
    return default if value is None else value


def _subsets_of(section: DatasetSection) -> list[SubsetSection]:
    if section.subsets:
        return list(section.subsets)
    out = []
    if section.path:
        out.append(SubsetSection(path=section.path))
    if section.reg_path:
        out.append(SubsetSection(path=section.reg_path, is_reg=True, repeats=section.reg_repeats))
    return out


def _subset_settings(section: DatasetSection, s: SubsetSection, folder: Path, repeats: int | None,
             folder_caption: str) -> Subset:
    default_weight = section.prior_loss_weight if s.is_reg else 1.0
    return Subset(
        path=folder, name=folder.name, is_reg=s.is_reg,
        repeats=repeats if repeats is not None else _pick(s.repeats, section.repeats),
        trigger="" if s.is_reg else _pick(s.trigger, section.trigger),
        class_token=_pick(s.class_token, section.class_token),
        folder_caption=folder_caption,
        caption_extension=_pick(s.caption_extension, section.caption_extension),
        fallback_caption=_pick(s.fallback_caption, section.fallback_caption),
        loss_weight=_pick(s.loss_weight, default_weight),
        flip=_pick(s.flip, section.flip), crop=_pick(s.crop, section.crop),
        alpha_mode=_pick(s.alpha_mode, section.alpha_mode),
        shuffle_captions=_pick(s.shuffle_captions, section.shuffle_captions),
        keep_tokens=_pick(s.keep_tokens, section.keep_tokens),
        caption_dropout=_pick(s.caption_dropout, section.caption_dropout),
        tag_dropout=_pick(s.tag_dropout, section.tag_dropout),
    )


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


# Image formats a user may have that sdlora does not read: named in the report instead of passed over
OTHER_IMAGE_EXTENSIONS = (".jfif", ".jpe", ".heic", ".heif", ".avif", ".jxl", ".psd", ".svg", ".tga", ".exr",
                          ".ico", ".dng", ".cr2", ".nef", ".arw")


def _broken_link(p: Path) -> str | None:
    """Why ``p`` is a link that leads nowhere (a loop or a missing target), else None."""
    if not p.is_symlink():
        return None
    try:
        p.stat()
    except OSError as exc:
        return "a symlink loop" if exc.errno == errno.ELOOP else "a dangling symlink (its target is missing)"
    except RuntimeError:
        return "a symlink loop"
    return None


def _images_in(folder: Path, report: "DataReport") -> list[Path]:
    """The images of one folder, by name; broken links and images of unsupported formats are named in
    ``report.skipped``."""
    images = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        broken = _broken_link(p)
        if broken:
            report.skipped.append((p, f"{broken}; skipped"))
        elif p.suffix.lower() in OTHER_IMAGE_EXTENSIONS and p.is_file():
            report.skipped.append((p, f"{p.suffix} images are not read (use {', '.join(IMAGE_EXTENSIONS)}); a .jfif "
                                      "is a JPEG: rename it to .jpg; convert HEIC/AVIF and others to PNG or JPEG"))
        elif _is_image(p):
            images.append(p)
    return images


def _subset_folders(root: Path, report: "DataReport") -> list[Path]:
    """The sub-folders of a dataset folder that may be kohya subsets. One that resolves (through a link) to
    the folder itself or to a folder already listed is named in ``report.skipped`` and left out: a
    ``10_x -> .`` link would otherwise train the root's images ten more times."""
    seen = {root.resolve()}
    out = []
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        broken = _broken_link(child)
        if broken:
            report.skipped.append((child, f"{broken}; skipped"))
            continue
        if not child.is_dir():
            continue
        real = child.resolve()
        if real in seen:
            report.skipped.append((child, f"links to {display_path(real)}, a folder already in the dataset; "
                                          "skipped so that its images are not trained twice"))
            continue
        seen.add(real)
        out.append(child)
    return out


def read_caption(image: Path, extension: str) -> str | None:
    """The caption beside ``image`` (None when there is no caption file); lines joined with ', '."""
    for ext in dict.fromkeys((extension,) + CAPTION_EXTENSIONS):
        side = image.with_name(image.stem + ext)
        if side.is_file() and side != image:
            text = side.read_text(encoding="utf-8", errors="replace")
            return ", ".join(line.strip() for line in text.splitlines() if line.strip())
    return None


def _with_trigger(caption: str, trigger: str) -> tuple[str, str]:
    """(body, trigger): the trigger is dropped when the caption already names it."""
    if not trigger:
        return caption, ""
    if re.search(rf"(^|[\s,]){re.escape(trigger)}($|[\s,])", caption):
        return caption, ""
    return caption, trigger


def _candidates(section: DatasetSection, key: str, report: DataReport) -> tuple[list[Subset], list[tuple[int, Path]]]:
    """The subsets of ``section`` (a kohya root expands into its N_name folders) and (subset index, image
    path) for every image found; a second image with the same stem in one folder is a duplicate."""
    subsets: list[Subset] = []
    candidates: list[tuple[int, Path]] = []
    for i, sub in enumerate(_subsets_of(section)):
        where = f"{key}.subsets[{i}].path" if section.subsets else (f"{key}.reg_path" if sub.is_reg else f"{key}.path")
        root = Path(sub.path)
        if not root.is_dir():
            raise DatasetError(f"{where} = {str(root)!r}: no such folder; point it at a folder of images")
        folders: list[tuple[Path, int | None, str]] = [(root, None, "")]
        for child in _subset_folders(root, report):
            m = _KOHYA_FOLDER.match(child.name)
            if m and int(m.group(1)) > 0:
                folders.append((child, int(m.group(1)), m.group(2).strip()))
            else:
                report.ignored_folders.append(child)
        found = 0
        for folder, repeats, folder_caption in folders:
            images = _images_in(folder, report)
            found += len(images)
            if not images and folder is root and len(folders) > 1:
                continue  # a kohya root holding only N_name folders
            subsets.append(_subset_settings(section, sub, folder, repeats, folder_caption))
            index = len(subsets) - 1
            seen: dict[str, Path] = {}
            for p in images:
                stem = p.stem.casefold()
                if stem in seen:
                    report.duplicates.append((seen[stem], p))
                    continue
                seen[stem] = p
                candidates.append((index, p))
        if not found:
            raise DatasetError(f"{where} = {str(root)!r} holds no images (looked for "
                               f"{', '.join(IMAGE_EXTENSIONS)}); add images or fix the path")
    return subsets, candidates


def _probe(section: DatasetSection, subsets: list[Subset], entry: tuple[int, Path]):
    """(entry, (width, height, has mask) or None, why it was skipped) for one candidate image."""
    index, path = entry
    try:
        decoded = decode(path, subsets[index].alpha_mode, section.background)
    except BadImage as exc:
        return entry, None, str(exc)
    w, h = decoded.image.size
    if min(w, h) < section.min_image_side:
        return entry, None, (f"too small ({w}x{h}; the shorter side must be at least "
                             f"{section.min_image_side} px, dataset.min_image_side)")
    return entry, (w, h, decoded.mask is not None), ""


def _item(sub: Subset, index: int, path: Path, info: tuple[int, int, bool], report: DataReport) -> Item:
    text = read_caption(path, sub.caption_extension)
    if not text:
        report.no_caption.append(path)
        if sub.is_reg:
            text = sub.fallback_caption or sub.class_token or sub.folder_caption
        else:
            text = sub.fallback_caption or sub.folder_caption or sub.class_token
    body, trigger = _with_trigger(text, sub.trigger)
    w, h, masked = info
    return Item(path=path, subset=index, caption=body, trigger=trigger, size=(w, h), has_alpha_mask=masked)


def scan(section: DatasetSection, key: str = "dataset") -> Dataset:
    """Scan the folders of ``section``; raises DatasetError when no usable training image is left."""
    report = DataReport()
    subsets, candidates = _candidates(section, key, report)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda entry: _probe(section, subsets, entry), candidates))
    items: list[Item] = []
    for (index, path), info, why in results:
        if info is None:
            report.skipped.append((path, why))
        else:
            items.append(_item(subsets[index], index, path, info, report))
    counts = collections.Counter(it.subset for it in items)
    report.counts = {("reg " if s.is_reg else "") + f"{s.path} (x{s.repeats})": counts.get(i, 0)
                     for i, s in enumerate(subsets)}
    dataset = Dataset(subsets, items, report)
    if not dataset.train_items():
        where = ", ".join(str(s.path) for s in subsets if not s.is_reg) or "the dataset"
        detail = "".join(f"\n  {p}: {why}" for p, why in report.skipped[:20])
        detail = f"; every image was skipped:{detail}" if detail else ""
        raise DatasetError(f"no usable training image in {where}{detail}")
    return dataset
