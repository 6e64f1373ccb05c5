"""Which samples make up each batch, per epoch: a pure function of (dataset, seed, epoch).

An epoch holds every training image ``repeats`` times, plus as many regularisation samples (cycled
through the regularisation images) when there are any, as kohya does. Samples are grouped by bucket,
shuffled within it, cut into global batches (per-device batch × processes) and the batches shuffled.
Because nothing depends on earlier epochs, a resumed run rebuilds the same order from the epoch number
alone, and every process of a data-parallel run sees the same global batches (each takes its slice).
"""
from __future__ import annotations

import numpy as np

from sdlora.trainers.data import Dataset


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, *keys)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]))


def epoch_samples(dataset: Dataset, seed: int, epoch: int) -> list[int]:
    """Item indices of one epoch's samples (before batching)."""
    samples = [i for i in dataset.train_items() for _ in range(dataset.subsets[dataset.items[i].subset].repeats)]
    reg = [i for i in dataset.reg_items() for _ in range(dataset.subsets[dataset.items[i].subset].repeats)]
    if reg:
        rng = rng_for(seed, 1, epoch)
        order = [reg[j] for j in rng.permutation(len(reg))]
        samples += [order[k % len(order)] for k in range(len(samples))]
    return samples


def epoch_batches(dataset: Dataset, seed: int, epoch: int, global_batch: int) -> list[list[int]]:
    """The epoch's global batches, each a list of item indices that share one bucket."""
    rng = rng_for(seed, 2, epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i in epoch_samples(dataset, seed, epoch):
        by_bucket.setdefault(dataset.items[i].bucket, []).append(i)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        group = by_bucket[bucket]
        group = [group[j] for j in rng.permutation(len(group))]
        batches += [group[k:k + global_batch] for k in range(0, len(group), global_batch)]
    return [batches[j] for j in rng.permutation(len(batches))]


def local_slice(batch: list[int], rank: int, world: int) -> tuple[int, int]:
    """(start, stop) of this process's part of a global batch (contiguous, sizes differ by at most one)."""
    n = len(batch)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
