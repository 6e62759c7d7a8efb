"""A data root's listing (a FileList) saved as one .npz file and reused while the root's folders are
unchanged, so that a resumed or repeated run on a 1.28M-image folder does not walk it again.

The rule: the cache of root R (its absolute path) holds the modification time of every folder the listing
walked (R itself, each class folder and their sub-folders), each read before the folder's entries. It is
used when every one of these folders still has that time: adding, removing or renaming a file or a folder
changes the time of the folder that holds it. The limits: a file replaced in place under the same name is not
seen (the listing is the same, only the image differs); a listing is not cached when one of its folders
changed less than RACY_SECONDS before it started (a change in the same clock tick of the file system would
leave the time equal), a window measured on this machine's clock, so a file server whose clock runs more
than that behind could still hide such a change. Delete the file (or give another cache folder) to force a
new listing.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from vicregl_cli.data.file_list import FileList, list_image_folder
from vicregl_cli.files import write_atomic

CACHE_FORMAT = 1
RACY_SECONDS = 2.0


def cache_path(root: str | Path, cache_dir: str | Path) -> Path:
    """The cache file of `root` in `cache_dir`: named by a hash of the root's absolute path."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(Path(root).expanduser()))).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"file_list-{digest}.npz"


def _key(root: str) -> np.ndarray:
    """What a listing depends on besides its folders: the format, the absolute root, the image extensions."""
    return np.array([str(CACHE_FORMAT), os.path.abspath(root), ",".join(IMG_EXTENSIONS)])


def save_file_list(files: FileList, path: Path) -> Path:
    """Write `files` and its folder times to `path` (write then rename: readers never see half a file)."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                key=_key(files.root),
                classes=np.array(files.classes),
                relative=files.relative,
                offsets=files.offsets,
                labels=files.labels,
                folders=np.array(files.folders),
                folder_mtimes=files.folder_mtimes,
            )

    return write_atomic(path, write)


def _unchanged(root: str, folders: list[str], mtimes: np.ndarray) -> bool:
    for folder, mtime in zip(folders, mtimes.tolist(), strict=True):
        try:
            if os.stat(os.path.join(root, folder)).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def load_file_list(root: str | Path, path: Path) -> FileList | None:
    """The cached listing of `root` in `path`, or None when there is none, it is unreadable, it belongs to
    another root / format / extension list, or a folder of the root changed since."""
    root = str(Path(root).expanduser())
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if arrays.get("key", np.array([])).tolist() != _key(root).tolist():
        return None
    folders = arrays["folders"].tolist()
    if not _unchanged(root, folders, arrays["folder_mtimes"]):
        return None
    return FileList(
        root=root,
        classes=arrays["classes"].tolist(),
        relative=arrays["relative"],
        offsets=arrays["offsets"],
        labels=arrays["labels"],
        folders=folders,
        folder_mtimes=arrays["folder_mtimes"],
    )


def load_or_list(root: str | Path, cache_dir: str | Path | None, write: bool = True) -> tuple[FileList, bool]:
    """(the listing of `root`, whether it came from the cache in `cache_dir`). A fresh listing is saved there
    when `write` (one process of a run writes) unless one of its folders changed within RACY_SECONDS; a
    folder that cannot be written is a warning."""
    path = cache_path(root, cache_dir) if cache_dir is not None else None
    cached = load_file_list(root, path) if path is not None else None
    if cached is not None:
        return cached, True
    files = list_image_folder(root)
    if path is not None and write:
        save_if_settled(files, path)
    return files, False


def save_if_settled(files: FileList, path: Path) -> bool:
    """Save a fresh listing to `path` unless one of its folders changed within RACY_SECONDS before the walk
    began (the module's rule); whether it was saved."""
    if int(files.folder_mtimes.max()) >= files.listed_ns - int(RACY_SECONDS * 1e9):
        return False
    try:
        save_file_list(files, path)
    except OSError as error:  # a read-only shared cache folder still serves its hits; a miss lists
        warnings.warn(f"the listing of {files.root} was not cached in {path.parent}: {error}", stacklevel=2)
        return False
    return True
