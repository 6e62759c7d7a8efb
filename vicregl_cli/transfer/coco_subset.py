"""The deterministic 10 % of COCO train2017 (`--dataset coco-10pct`): one rule for both detection engines, so
the detectron2 launcher and the torchvision engine train on the same images."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SUBSET_FRACTION = 0.1
SUBSET_SEED = 0


def coco_subset_ids(
    image_ids: Iterable[int], fraction: float = SUBSET_FRACTION, seed: int = SUBSET_SEED
) -> list[int]:
    """`fraction` of the image ids (at least one): ids sorted ascending, then a seeded draw without
    replacement (numpy RandomState(seed)), returned ascending. Independent of the order the ids come in."""
    ordered = sorted(set(image_ids))
    if not ordered:
        return []
    count = max(1, round(len(ordered) * fraction))
    chosen = np.sort(np.random.RandomState(seed).choice(len(ordered), size=count, replace=False))
    return [ordered[index] for index in chosen]
