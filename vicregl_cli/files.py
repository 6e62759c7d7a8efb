"""Write-then-rename: a reader (another rank, a resumed run, `report`) never sees half a file. And the checks
a plan makes of where a run will write, so that a bad --out fails before any compute, not after it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vicregl_cli.errors import UserError


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary)` on a file beside `path` (named per process), then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: str | Path, content: Any) -> Path:
    """Write `content` as indented JSON to `path` atomically."""
    return write_text_atomic(path, json.dumps(content, indent=2) + "\n")


def check_writable_folder(folder: str | Path, option: str = "--out") -> Path:
    """`folder` exists as a writable folder or can be created (no file on its path, the nearest existing
    folder writable); a UserError naming `option` otherwise. Creates nothing."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file, not a folder: choose another {option}")
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise UserError(f"{option} {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder} is not writable (no write permission on {existing})")
    return folder


def check_writable_file(path: str | Path, option: str, example: str) -> Path:
    """`path` names a file that can be written (its folder writable or creatable), not a folder: a UserError
    naming `option` and, for a folder, the file `example` inside it."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(
            f"{option} {path} is a directory; give the file to write inside it, e.g. {path / example}"
        )
    check_writable_folder(path.parent, f"the folder of {option}")
    return path
