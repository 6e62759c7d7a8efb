"""The pretraining file list as three numpy arrays (encoded paths, offsets, labels) instead of a Python list
of (Path, label) tuples.

Each DataLoader worker is a fork of the main process. Reading an item of a Python list touches the reference
counts of its objects, so every page of the list is copied into every worker as the epoch goes on (about
0.5 kB per image and worker). Reading a numpy array touches no object of the buffer: the pages stay shared.
The listing reproduces torchvision's `ImageFolder` exactly (classes = sorted sub-folders of the root, files
found by a sorted `os.walk` with links followed, filtered by `IMG_EXTENSIONS`): an index is the same image.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from vicregl_cli.data.readers import class_folders, load_rgb, require_dir, require_images_per_class


@dataclass
class FileList:
    """Image paths relative to `root` (file-system bytes, concatenated) and their class indices.

    Path i is `root/` + relative[offsets[i]:offsets[i + 1]]; `folders` are the directories the listing walked
    (relative to the root, the root itself as ""), with the modification times they had before it, for the
    cache to check whether the listing is still current.
    """

    root: str
    classes: list[str]
    relative: np.ndarray  # uint8, every relative path's bytes one after another
    offsets: np.ndarray  # int64, len(labels) + 1
    labels: np.ndarray  # int64
    folders: list[str]
    folder_mtimes: np.ndarray  # int64 nanoseconds, one per folder
    listed_ns: int = 0  # the clock when the walk began (time.time_ns()); 0 for a listing read from a cache

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """The path of image `index`, spelled as torchvision's ImageFolder spells it."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        return os.path.join(self.root, os.fsdecode(self.relative[start:stop].tobytes()))

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.path(index), int(self.labels[index])


def _walk_class(root: str, class_name: str, folders: dict[str, int]) -> list[bytes]:
    """The image paths of one class folder, relative to `root` and encoded, in ImageFolder's order; records
    each folder's modification time in `folders`, read before its entries so that a file added meanwhile
    changes it."""
    walked = []
    for directory, _, names in os.walk(os.path.join(root, class_name), followlinks=True):
        folders[os.path.relpath(directory, root)] = os.stat(directory).st_mtime_ns
        walked.append((directory, names))
    prefix = len(root) + 1
    found = []
    for directory, names in sorted(walked):
        for name in sorted(names):
            path = os.path.join(directory, name)
            if path.lower().endswith(IMG_EXTENSIONS):
                found.append(os.fsencode(path[prefix:]))
    return found


def list_image_folder(root: str | Path) -> FileList:
    """List `root/<class>/<image>` as torchvision's ImageFolder does; a missing root, no class folders or a
    class folder without images is a UserError."""
    listed_ns = time.time_ns()
    classes = class_folders(Path(root))
    root = str(require_dir(Path(root), "image folder root"))
    folders = {"": os.stat(root).st_mtime_ns}
    chunks, lengths, counts = [], [], []
    for name in classes:  # one class's Python strings at a time: the main process never holds them all
        found = _walk_class(root, name, folders)
        chunks.append(b"".join(found))
        lengths.append(np.fromiter(map(len, found), dtype=np.int64, count=len(found)))
        counts.append(len(found))
    require_images_per_class(Path(root), classes, counts)
    offsets = np.zeros(sum(counts) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    relative = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    names = sorted(folders)
    return FileList(
        root=root,
        classes=classes,
        relative=relative,
        offsets=offsets,
        labels=labels,
        folders=names,
        folder_mtimes=np.array([folders[name] for name in names], dtype=np.int64),
        listed_ns=listed_ns,
    )


class FileListDataset(Dataset):
    """Items (transform(RGB image), label) of a FileList; the ImageFolder dataset of pretraining. The loader
    gives a PIL image (readers.load_rgb, the default) or a uint8 (3, H, W) tensor (decode.read_rgb_uint8)."""

    def __init__(
        self,
        files: FileList,
        transform: Callable[[Image.Image | Tensor], Any] | None = None,
        loader: Callable[[str], Image.Image | Tensor] | None = None,
    ) -> None:
        self.files = files
        self.classes = files.classes
        self.transform = transform
        self.loader = loader or load_rgb

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.files[index]
        image = self.loader(path)
        return (self.transform(image) if self.transform is not None else image), label
