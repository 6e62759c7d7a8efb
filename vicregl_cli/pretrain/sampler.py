"""Resumable, replayable data order: per-epoch shuffling from seed + epoch, and one RNG seed per sample.

The permutation of epoch e comes from a generator seeded with seed + e; global batch t of that epoch is
perm[t*G:(t+1)*G] (G = global batch size) and rank r takes its r-th slice, so the data order does not depend
on the number of processes. Each sample carries a seed derived from (seed, epoch, position in the epoch); the
dataset wrapper seeds torch / numpy / random with it before running the augmentations, so a sample's views are
the same whichever worker loads it and whether or not the run was interrupted. Resuming at batch t simply
starts the epoch there.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the augmentations of the sample at `position` of epoch `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's batches of (dataset index, sample seed); drops the last incomplete global batch."""

    def __init__(
        self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        self.num_samples = num_samples
        self.global_batch = batch_size
        self.local_batch = batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields batches start_batch.. of `epoch` (start_batch > 0 when resuming
        mid-epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.global_batch + self.rank * self.local_batch
            yield [
                (order[position], sample_seed(self.seed, self.epoch, position))
                for position in range(first, first + self.local_batch)
            ]


def _seed_globals(seed: int) -> None:
    torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA streams stay untouched
    np.random.seed(seed)
    random.seed(seed)


class SeededSamples(Dataset):
    """Wraps a dataset so that item (index, seed) runs its transform with every global RNG seeded by `seed`.

    The caller's RNG states are restored afterwards, so loading in the main process (num_workers = 0) leaves
    the training RNG stream untouched; a loader worker's streams serve nothing else, so it skips that (0.1 ms
    per sample: numpy's state is 2.5 kB).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        if get_worker_info() is not None:
            _seed_globals(seed)
            return self.dataset[index]
        saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        _seed_globals(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])
