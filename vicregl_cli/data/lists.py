"""A labelled image list (image root, (path, label) samples, class names): what the list-file readers
(Places205, iNaturalist 2018) return, with the interface of the ImageFolder reader (`root`, `samples`,
`targets`, `classes`, `transform`) that the frozen-feature extractor and the classification protocols use.

Paths are kept as strings: Places205 lists 2.4 million training images, and a Path object per sample would
cost several hundred megabytes more in every data-loading worker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from vicregl_cli.data.readers import load_rgb
from vicregl_cli.errors import UserError


class LabelledImages(Dataset):
    """Images named by a list file; items are (transform(image), label). A label is a class index, or for
    multi-label sets (VOC classification) a row of per-class labels."""

    def __init__(
        self,
        root: Path,
        samples: list[tuple[str, Any]],
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.classes = list(classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform is not None else image), label


def check_split(samples: list[tuple[str, int]], num_classes: int, source: Path, split: str) -> None:
    """The checks every list split passes before any image is read: not empty, every label a known class,
    and its first and last images present (a wrong image root fails here, not hours into extraction; the
    other files are read, and a missing one named, when the protocol reaches them)."""
    if not samples:
        raise UserError(f"{split} split {source} lists no images")
    out_of_range = sorted({label for _, label in samples if not 0 <= label < num_classes})
    if out_of_range:
        shown = ", ".join(str(label) for label in out_of_range[:10])
        raise UserError(
            f"{split} split {source} has labels out of range [0, {num_classes}): {shown}"
            f"{' ...' if len(out_of_range) > 10 else ''}"
        )
    for path, _ in (samples[0], samples[-1]):
        if not Path(path).is_file():
            raise UserError(f"{split} split {source} names image {path}, which does not exist")


def require_file(path: Path, what: str) -> Path:
    """`path` itself, or a UserError naming what the missing file should have been."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}")
    return path
