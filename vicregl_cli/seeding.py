"""Seeded sections that restore the caller's random state: library code never reseeds the global RNG."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU (and current CUDA device's) generator seeded with `seed`, then restore
    both: a random init or an augmentation stream is reproducible without touching the caller's RNG."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device only, the one fork_rng restores
        yield
