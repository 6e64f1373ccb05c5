"""Caption augmentation: tag shuffling with the first tags kept, tag dropout, caption dropout.

A caption is a list of tags joined by the subset's separator ("a photo, red hair, smiling"). The trigger
word, when the subset has one, always stays first; ``keep_tokens`` more tags after it stay in place too.
Every random choice comes from the ``rng`` passed in, which the loop derives from (seed, epoch, batch,
slot), so a resumed run makes the same choices.
"""
from __future__ import annotations

import numpy as np

from sdlora.trainers.data import Item, Subset


def varies(subset: Subset) -> bool:
    """True when the caption text changes from one epoch to the next (beyond being dropped)."""
    return subset.shuffle_captions or subset.tag_dropout > 0


def augment(item: Item, subset: Subset, rng: np.random.Generator, separator: str = ",") -> str:
    """The caption ``item`` is trained with this time."""
    if subset.caption_dropout and rng.random() < subset.caption_dropout:
        return ""
    tags = [t.strip() for t in item.caption.split(separator) if t.strip()] if separator else [item.caption]
    if varies(subset):
        keep, rest = tags[:subset.keep_tokens], tags[subset.keep_tokens:]
        if subset.tag_dropout:
            rest = [t for t in rest if rng.random() >= subset.tag_dropout]
        if subset.shuffle_captions:
            rest = [rest[i] for i in rng.permutation(len(rest))]
        tags = keep + rest
    if item.trigger:
        tags = [item.trigger] + tags
    joiner = separator + " " if separator.strip() else separator or " "
    return joiner.join(tags)
