"""Aspect-ratio bucketing: the set of (width, height) training sizes and which one each image gets.

Buckets keep the area at or under the training resolution's (w·h), with sides that are multiples of
``step`` between ``min_side`` and ``max_side``; each image goes to the bucket closest to its aspect ratio
(in log space, so 2:1 and 1:2 are equally far from 1:1). With ``no_upscale`` an image smaller than the
training area keeps its own size, rounded down to the step. With bucketing off every image trains at the
resolution itself.
"""
from __future__ import annotations

import collections
import math

from sdlora.errors import ConfigError
from sdlora.trainers.config import DatasetSection
from sdlora.trainers.data import Dataset


def make_buckets(resolution: tuple[int, int], min_side: int, max_side: int, step: int) -> list[tuple[int, int]]:
    """Every (width, height) bucket, sorted by aspect ratio."""
    w, h = resolution
    area = w * h
    base = (w // step * step, h // step * step)
    if min(base) < step:
        raise ConfigError(f"dataset.bucket_step = {step} is larger than the resolution {w}x{h}; "
                          f"use a step of at most {min(w, h)} (a multiple of 8)")
    min_side = min(min_side, min(base)) // step * step or step
    max_side = max(max_side, max(base))
    found = {base}
    side = min_side
    while side <= max_side:
        other = min(max_side, area // side // step * step)
        if other >= min_side:
            found.add((side, other))
            found.add((other, side))
        side += step
    return sorted(found, key=lambda b: (b[0] / b[1], b[0] * b[1]))


def default_step(resolution: tuple[int, int]) -> int:
    """The bucket step when none is set: 64 from a 256 px shorter side down, else a quarter of the shorter
    side rounded down to a multiple of 8 (at least 8), so a default never conflicts with the resolution."""
    return min(64, max(8, min(resolution) // 4 // 8 * 8))


def nearest(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ar = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ar), -b[0] * b[1]))


def assign(dataset: Dataset, section: DatasetSection, resolution: tuple[int, int]) -> list[tuple[int, int]]:
    """Set ``item.bucket`` for every item; returns the bucket list."""
    if not section.buckets:
        for it in dataset.items:
            it.bucket = resolution
        return [resolution]
    step = section.bucket_step
    if step is None:
        step = default_step(resolution)
        dataset.bucket_note = (f"bucket step {step} (dataset.bucket_step not set: derived from the resolution "
                               f"{resolution[0]}x{resolution[1]})")
    else:
        dataset.bucket_note = f"bucket step {step} (dataset.bucket_step)"
    buckets = make_buckets(resolution, section.bucket_min_side, section.bucket_max_side, step)
    area = resolution[0] * resolution[1]
    for it in dataset.items:
        w, h = it.size
        if section.bucket_no_upscale and w * h <= area:
            it.bucket = (max(step, w // step * step), max(step, h // step * step))
        else:
            it.bucket = nearest(it.size, buckets)
    return buckets


def report(dataset: Dataset) -> str:
    """Bucket sizes with their image counts (repeats not counted), one per line."""
    counts = collections.Counter(it.bucket for it in dataset.items)
    lines = [f"  {dataset.bucket_note}"] if dataset.bucket_note else []
    lines += [f"  {w}x{h} (aspect {w / h:.2f}): {n} images" for (w, h), n in sorted(counts.items())]
    return "\n".join(lines)
