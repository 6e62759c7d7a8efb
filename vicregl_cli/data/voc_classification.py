"""The VOC classification labels: `ImageSets/Main/<class>_<split>.txt` of a VOC devkit (one line per image,
`<id> <label>` with 1 present, -1 absent, 0 present only as difficult objects), read into one label matrix,
and the listed JPEGImages as a dataset for the frozen-feature extractor.

Images are ordered by sorted id, as VISSL's `create_voc_data_files.py` orders them (the cross-validation folds
of `vicregl svm` depend on that order); VOC2007's own lists are already sorted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vicregl_cli.data.lists import LabelledImages
from vicregl_cli.data.readers import require_voc_root, voc_class_names
from vicregl_cli.errors import UserError

DEVKIT_LABELS = (-1, 0, 1)  # absent, difficult only, present
SHOWN_IN_MESSAGES = 5


@dataclass(frozen=True)
class VOCClassificationSplit:
    """One split's labels: `labels[i, c]` is the devkit label (-1, 0, 1) of `ids[i]` for `classes[c]`."""

    root: Path
    split: str
    classes: list[str]
    ids: list[str]
    labels: np.ndarray

    @property
    def paths(self) -> list[Path]:
        return [self.root / "JPEGImages" / f"{image_id}.jpg" for image_id in self.ids]

    def counts(self, value: int) -> np.ndarray:
        """How many images of each class carry the devkit label `value`."""
        return (self.labels == value).sum(axis=0)


def _read_class_file(listing: Path) -> dict[str, int]:
    """{id: label} of one `<class>_<split>.txt`; a malformed line, a label outside -1/0/1 or a repeated id is
    a UserError naming the file and line."""
    labels: dict[str, int] = {}
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1].lstrip("-") not in ("0", "1"):
            raise UserError(f"{listing}:{number}: expected '<image id> <-1|0|1>', got {line.strip()!r}")
        if fields[0] in labels:
            raise UserError(f"{listing}:{number}: image {fields[0]} is listed twice")
        labels[fields[0]] = int(fields[1])
    if not labels:
        raise UserError(f"{listing} lists no images")
    return labels


def _class_files(root: Path, split: str, classes: list[str]) -> list[Path]:
    folder = root / "ImageSets" / "Main"
    files = [folder / f"{name}_{split}.txt" for name in classes]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        found = sorted({path.stem.rsplit("_", 1)[-1] for path in folder.glob("*_*.txt")})
        raise UserError(
            f"{folder} lacks {len(missing)} class label file(s) for split {split!r}: "
            f"{', '.join(missing[:SHOWN_IN_MESSAGES])}{' ...' if len(missing) > SHOWN_IN_MESSAGES else ''} "
            f"(splits with class files there: {', '.join(found) or 'none'})"
        )
    return files


def _missing_images(paths: list[Path]) -> list[Path]:
    return [path for path in paths if not path.is_file()]


def read_classification_split(voc_root: Path, split: str) -> VOCClassificationSplit:
    """Read every class's `<class>_<split>.txt` (classes: `classes.txt` if present, else the 20 VOC ones);
    every file must list the same images, and each image must exist as `JPEGImages/<id>.jpg`."""
    root = require_voc_root(voc_root)
    classes = voc_class_names(root)
    per_class = [_read_class_file(file) for file in _class_files(root, split, classes)]
    ids = sorted(per_class[0])
    for name, labels in zip(classes[1:], per_class[1:], strict=True):
        if labels.keys() != per_class[0].keys():
            differing = sorted(labels.keys() ^ per_class[0].keys())
            raise UserError(
                f"{name}_{split}.txt and {classes[0]}_{split}.txt list different images "
                f"(e.g. {', '.join(differing[:SHOWN_IN_MESSAGES])})"
            )
    matrix = np.array([[labels[image_id] for labels in per_class] for image_id in ids], dtype=np.int8)
    found = VOCClassificationSplit(root, split, classes, ids, matrix)
    missing = _missing_images(found.paths)
    if missing:
        raise UserError(
            f"{len(missing)} image(s) of split {split!r} are missing: "
            f"{', '.join(str(path) for path in missing[:SHOWN_IN_MESSAGES])}"
        )
    return found


def split_images(
    split: VOCClassificationSplit, transform: Callable[[Image.Image], Any] | None = None
) -> LabelledImages:
    """The split's images as the frozen-feature extractor reads them; each label is the image's row of devkit
    labels (one per class), so `targets` is the (N, classes) label matrix."""
    rows = split.labels.astype(np.int64).tolist()
    samples = [(str(path), row) for path, row in zip(split.paths, rows, strict=True)]
    return LabelledImages(split.root, samples, split.classes, transform)
