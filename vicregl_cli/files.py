"""Write-then-rename: a reader (another rank, a resumed run, `report`) never sees half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


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

