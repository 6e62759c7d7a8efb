"""Which scene each synthetic image shows: its id, label and generator, functions of (seed, split, index,
layout) only; shared by the ImageFolder / VOC writer (synthetic.py) and the COCO one (synthetic_coco.py)."""

from __future__ import annotations

import numpy as np

from vicregl_cli.data.scenes import CLASS_NAMES

SPLITS: tuple[str, ...] = ("train", "val")
LAYOUTS: tuple[str, ...] = ("voc", "classification")


def image_rng(seed: int, split: str, index: int, layout: str = "voc") -> np.random.Generator:
    """The generator of one image: a function of (seed, split, index, layout) only, not of the worker."""
    return np.random.default_rng([seed, SPLITS.index(split), index, LAYOUTS.index(layout)])


def image_id(split: str, index: int) -> str:
    """The file stem of one image, the same in every layout."""
    return f"{split}_{index:06d}"


def image_label(index: int) -> int:
    """Labels cycle through the classes, so every split is balanced."""
    return index % len(CLASS_NAMES)
