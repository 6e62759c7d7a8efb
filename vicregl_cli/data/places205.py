"""Places205's standard layout (the MIT release): list files `trainvalsplit_places205/train_places205.csv`
and `val_places205.csv`, one "<image path> <label>" line per image (labels 0-204), image paths relative to
`data/vision/torralba/deeplearning/images256/` (e.g. `a/abbey/gsun_0003586c3eedd97457b2d729b3ebd2e4.jpg 0`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vicregl_cli.data.lists import LabelledImages, check_split, require_file
from vicregl_cli.errors import UserError

LIST_FOLDER = "trainvalsplit_places205"
TRAIN_LIST = f"{LIST_FOLDER}/train_places205.csv"
VAL_LIST = f"{LIST_FOLDER}/val_places205.csv"
IMAGE_FOLDER = "data/vision/torralba/deeplearning/images256"


def read_list(path: Path) -> list[tuple[str, int]]:
    """The (relative image path, label) pairs of one list file; a line that is not "<path> <label>" with a
    non-negative integer label raises a UserError naming the file and line."""
    path = require_file(path, "Places205 list file")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        label = parts[-1] if len(parts) == 2 else ""
        if not label.isdigit():
            raise UserError(f"{path}:{number}: expected '<image path> <label>' (label >= 0), got {line!r}")
        pairs.append((parts[0].lstrip("/"), int(label)))
    return pairs


def image_root(root: Path) -> Path:
    """`ROOT/data/vision/torralba/deeplearning/images256` when it exists (the release's layout), else ROOT
    itself (images extracted elsewhere, list paths relative to ROOT)."""
    standard = Path(root) / IMAGE_FOLDER
    return standard if standard.is_dir() else Path(root)


def read_places205(
    root: Path,
    train_transform: Callable[[Any], Any] | None = None,
    val_transform: Callable[[Any], Any] | None = None,
    *,
    train_list: Path | None = None,
    val_list: Path | None = None,
) -> tuple[LabelledImages, LabelledImages]:
    """Train and val splits of Places205 under `root` (`train_list` / `val_list` replace the standard list
    files). Classes are the train labels 0..K-1, each named by the folder of its first train image; a label
    without train images, or a val label >= K, raises a UserError before any image is read."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Places205 root {root} does not exist")
    images = image_root(root)
    train_source = Path(train_list) if train_list else root / TRAIN_LIST
    val_source = Path(val_list) if val_list else root / VAL_LIST
    train_pairs, val_pairs = read_list(train_source), read_list(val_source)
    if not train_pairs:
        raise UserError(f"train split {train_source} lists no images")
    names: dict[int, str] = {}
    for relative, label in train_pairs:
        names.setdefault(label, str(Path(relative).parent))
    num_classes = max(names) + 1
    absent = [label for label in range(num_classes) if label not in names]
    if absent:
        raise UserError(f"train split {train_source} has no image of labels {absent[:10]} (need 0..K-1)")
    classes = [names[label] for label in range(num_classes)]
    splits = []
    for split, source, pairs, transform in (
        ("train", train_source, train_pairs, train_transform),
        ("val", val_source, val_pairs, val_transform),
    ):
        samples = [(str(images / relative), label) for relative, label in pairs]
        check_split(samples, num_classes, source, split)
        splits.append(LabelledImages(images, samples, classes, transform))
    return splits[0], splits[1]
