"""iNaturalist 2018's standard layout: `ROOT/train2018.json` and `ROOT/val2018.json`, COCO-like (`images` with
`id` and `file_name`, `annotations` with `image_id` and `category_id`, `categories` with `id` and `name`),
image paths relative to ROOT (e.g. `train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vicregl_cli.data.lists import LabelledImages, check_split, require_file
from vicregl_cli.errors import UserError

TRAIN_FILE = "train2018.json"
VAL_FILE = "val2018.json"


def _entries(content: dict, key: str, fields: tuple[str, ...], path: Path) -> list[dict]:
    """content[key] as a list of objects that each have `fields`, or a UserError naming the first bad one."""
    entries = content.get(key)
    if not isinstance(entries, list):
        raise UserError(f"{path} has no '{key}' list")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(field not in entry for field in fields):
            raise UserError(f"{path}: {key}[{index}] lacks one of {', '.join(fields)}: {entry!r}"[:300])
    return entries


def read_annotations(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """(file_name, category id) per image, in the file's image order, and {category id: name}. Malformed
    JSON, an image without annotation, an annotation of an unknown image and an image with two categories
    raise a UserError naming the file."""
    path = require_file(path, "iNaturalist annotation file")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} is not a JSON object with images, annotations and categories")
    images = _entries(content, "images", ("id", "file_name"), path)
    annotations = _entries(content, "annotations", ("image_id", "category_id"), path)
    categories = _entries(content, "categories", ("id",), path)
    category_of: dict[Any, int] = {}
    known_images = {image["id"] for image in images}
    for annotation in annotations:
        image_id, category = annotation["image_id"], annotation["category_id"]
        if image_id not in known_images:
            raise UserError(f"{path}: an annotation names image id {image_id!r}, which is not in 'images'")
        if category_of.setdefault(image_id, category) != category:
            first = category_of[image_id]
            raise UserError(f"{path}: image id {image_id!r} has two categories ({first}, {category})")
    unannotated = [image["id"] for image in images if image["id"] not in category_of]
    if unannotated:
        raise UserError(
            f"{path}: {len(unannotated)} image(s) have no annotation, e.g. image id {unannotated[0]!r}"
        )
    names = {category["id"]: str(category.get("name", category["id"])) for category in categories}
    return [(image["file_name"], category_of[image["id"]]) for image in images], names


def read_inat18(
    root: Path,
    train_transform: Callable[[Any], Any] | None = None,
    val_transform: Callable[[Any], Any] | None = None,
) -> tuple[LabelledImages, LabelledImages]:
    """Train and val splits of iNaturalist 2018 under `root`. Labels index train's categories sorted by
    id (iNat 2018's ids are already 0..8141); a category id train's `categories` lacks is a UserError."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"iNaturalist root {root} does not exist")
    train_pairs, names = read_annotations(root / TRAIN_FILE)
    val_pairs, _ = read_annotations(root / VAL_FILE)
    index_of = {category: index for index, category in enumerate(sorted(names))}
    classes = [names[category] for category in sorted(names)]
    splits = []
    for split, source, pairs, transform in (
        ("train", root / TRAIN_FILE, train_pairs, train_transform),
        ("val", root / VAL_FILE, val_pairs, val_transform),
    ):
        unknown = sorted({category for _, category in pairs if category not in index_of}, key=str)
        if unknown:
            raise UserError(
                f"{split} split {source} has category ids out of range (not in {root / TRAIN_FILE}'s "
                f"categories): {', '.join(map(str, unknown[:10]))}"
            )
        samples = [(str(root / file_name), index_of[category]) for file_name, category in pairs]
        check_split(samples, len(classes), source, split)
        splits.append(LabelledImages(root, samples, classes, transform))
    return splits[0], splits[1]
