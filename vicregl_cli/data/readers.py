"""Readers for the ImageFolder and VOC layouts (split lists, class names, masks, XML annotations) that the
evaluations reuse.

Every reader checks its layout up front and raises a `UserError` naming the missing folder, the empty split or
the unreadable file, so a wrong path fails in a second instead of deep inside a training loop.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from vicregl_cli.errors import UserError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError)  # PIL on a missing, truncated or non-image file


def unreadable_image(path: str | Path, error: Exception) -> UserError:
    """The one-line error for an image file PIL cannot read."""
    return UserError(f"cannot read image {path} ({error}): replace or remove the file")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB; a missing, truncated or non-image file raises a UserError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UNREADABLE_IMAGE as error:
        raise unreadable_image(path, error) from None


def require_dir(path: Path, what: str) -> Path:
    """`path` expanded, or a UserError saying that it does not exist or is not a folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"{what} {path} {state}")
    return path


def class_folders(root: Path) -> list[str]:
    """The sorted class folder names of an ImageFolder root (as torchvision finds them), or a UserError."""
    root = require_dir(root, "image folder root")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise UserError(f"image folder {root} has no class folders (expected {root}/<class>/<image>.jpg)")
    return classes


def require_images_per_class(root: Path, classes: Sequence[str], counts: Sequence[int]) -> None:
    """A UserError naming the class folders that hold no image (ImageFolder's extensions)."""
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        raise UserError(
            f"image folder {root} has class folders without images: {', '.join(empty)} "
            f"(accepted extensions: {', '.join(IMG_EXTENSIONS)})"
        )


class ImageFolderDataset(ImageFolder):
    """torchvision's ImageFolder with Path samples and clear errors; items are (transform(image), label)."""

    samples: list[tuple[Path, int]]

    def __init__(self, root: Path, transform: Callable[[Image.Image], Any] | None = None) -> None:
        root = require_dir(root, "image folder root")
        class_folders(root)
        super().__init__(str(root), transform=transform, loader=load_rgb, allow_empty=True)
        self.samples = [(Path(path), label) for path, label in self.samples]
        self.imgs = self.samples
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        require_images_per_class(root, self.classes, counts.tolist())


def image_folder(root: Path, transform: Callable[[Image.Image], Any] | None = None) -> ImageFolderDataset:
    """Read `root/<class>/<image>` (the ImageNet layout); labels index the sorted class folder names."""
    return ImageFolderDataset(root, transform=transform)


def check_same_classes(train: ImageFolderDataset, val: ImageFolderDataset) -> None:
    """Index val by train's classes; refuse val classes train lacks (their labels would mean nothing).

    A train class absent from val is allowed (it still receives votes and logits) and named in a warning;
    val's labels are re-indexed in place so that label k means train.classes[k] in both splits.
    """
    only_val = sorted(set(val.classes) - set(train.classes))
    if only_val:
        only_train = sorted(set(train.classes) - set(val.classes))
        raise UserError(
            f"train ({train.root}) and val ({val.root}) have different classes: "
            f"only in train: {', '.join(only_train) or '-'}; only in val: {', '.join(only_val)}"
        )
    if list(train.classes) == list(val.classes):
        return
    absent = sorted(set(train.classes) - set(val.classes))
    warnings.warn(
        f"{len(absent)} train class(es) have no val folder: {', '.join(absent[:10])}"
        f"{' ...' if len(absent) > 10 else ''}; val labels follow train's class indices",
        stacklevel=2,
    )
    to_train_index = [train.class_to_idx[name] for name in val.classes]
    val.samples = [(path, to_train_index[label]) for path, label in val.samples]
    val.imgs = val.samples
    val.targets = [label for _, label in val.samples]
    val.classes = list(train.classes)
    val.class_to_idx = dict(train.class_to_idx)


def voc_class_names(voc_root: Path) -> list[str]:
    """The class names: `classes.txt` in the VOC root (synthetic data) if present, else the 20 VOC ones."""
    listing = Path(voc_root) / "classes.txt"
    if not listing.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"{listing} lists no class names")
    if len(set(names)) != len(names):
        raise UserError(f"{listing} lists a class name twice")
    return names


def require_voc_root(voc_root: Path) -> Path:
    """`voc_root` (a VOC year folder with ImageSets/), or a UserError that says what it holds instead."""
    voc_root = Path(voc_root).expanduser()
    if voc_root.is_dir() and not (voc_root / "ImageSets").is_dir():
        nested = [child.name for child in sorted(voc_root.iterdir()) if (child / "ImageSets").is_dir()]
        if nested:
            raise UserError(f"{voc_root} is not a VOC root; did you mean {voc_root / nested[0]}?")
    return require_dir(voc_root, "VOC root")


def read_split(voc_root: Path, imagesets_sub: str, split: str) -> list[str]:
    """The image ids listed in `ImageSets/<imagesets_sub>/<split>.txt` (first word of each non-empty line)."""
    voc_root = require_voc_root(voc_root)
    listing = voc_root / "ImageSets" / imagesets_sub / f"{split}.txt"
    if not listing.is_file():
        folder = listing.parent
        available = sorted(path.stem for path in folder.glob("*.txt")) if folder.is_dir() else []
        raise UserError(f"split file {listing} does not exist (splits: {', '.join(available) or 'none'})")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"split file {listing} is empty")
    return ids


def read_mask(path: Path) -> np.ndarray:
    """A class-index mask from a palette ("P") or grey ("L") PNG; colour-coded RGB masks are refused."""
    try:
        with Image.open(path) as mask:
            mode = mask.mode
            indices = np.array(mask, dtype=np.uint8) if mode in ("P", "L") else None
    except (OSError, SyntaxError) as error:
        raise UserError(f"cannot read mask {path}: {error}") from None
    if indices is None:
        raise UserError(f"mask {path} has mode {mode}; expected a palette (P) or grey (L) PNG of indices")
    return indices


@dataclass
class VOCAnnotation:
    """One VOC XML file; boxes: float32 (N, 4) xyxy pixel edges (VOC's 1-based xmin, ymin minus 1)."""

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def _xml_text(element: ElementTree.Element, tag: str, path: Path) -> str:
    found = element.find(tag)
    if found is None or found.text is None:
        raise UserError(f"annotation {path} has no <{tag}> in <{element.tag}>")
    return found.text.strip()


def parse_voc_xml(path: Path, class_names: Sequence[str]) -> VOCAnnotation:
    """Parse one VOC annotation file; an unknown class or a malformed file raises a UserError naming it."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise UserError(f"cannot read annotation {path}: {error}") from None
    index_of = {name: index for index, name in enumerate(class_names)}
    size = root.find("size")
    if size is None:
        raise UserError(f"annotation {path} has no <size>")
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _xml_text(obj, "name", path)
        if name not in index_of:
            known = ", ".join(class_names)
            raise UserError(f"annotation {path} names unknown class {name!r} (known: {known})")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise UserError(f"annotation {path} has an object {name!r} without <bndbox>")
        xmin, ymin, xmax, ymax = (
            float(_xml_text(bndbox, tag, path)) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        labels.append(index_of[name])
        flag = obj.find("difficult")
        difficult.append(flag is not None and flag.text is not None and flag.text.strip() == "1")
    return VOCAnnotation(
        filename=_xml_text(root, "filename", path),
        width=int(_xml_text(size, "width", path)),
        height=int(_xml_text(size, "height", path)),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )
