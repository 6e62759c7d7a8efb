"""The pretraining presets shipped inside the package (vicregl_cli/configs/pretrain/*.yaml) and `--config`'s
lookup: a YAML file path, else a packaged preset by name, so that an installed wheel needs no checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vicregl_cli.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PRESET_DIR = files("vicregl_cli") / "configs" / "pretrain"
SUFFIX = ".yaml"


def preset_names() -> list[str]:
    """The packaged presets' names (file names without .yaml), sorted."""
    return sorted(entry.name[: -len(SUFFIX)] for entry in PRESET_DIR.iterdir() if entry.name.endswith(SUFFIX))


def preset_file(name: str) -> Traversable:
    """The packaged preset `name` (with or without .yaml); a UserError listing the presets otherwise."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if stem not in preset_names():
        raise UserError(
            f"--config {name}: no such file and no packaged preset of that name; presets: "
            f"{', '.join(preset_names())} (vicregl presets)"
        )
    return PRESET_DIR / f"{stem}{SUFFIX}"


def read_config_source(source: str | Path) -> dict[str, Any]:
    """The option: value mapping of `--config`: an existing YAML file, else the packaged preset so named."""
    path = Path(source)
    if path.is_file():
        text, label = path.read_text(), str(path)
    elif path.exists() or len(path.parts) > 1:
        packaged = f" (a packaged preset: --config {path.stem})" if path.stem in preset_names() else ""
        raise UserError(f"config file {source} does not exist or is not a file{packaged}")
    else:
        resource = preset_file(str(source))
        text, label = resource.read_text(), f"preset {resource.name}"
    loaded = yaml.safe_load(text)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{label}: expected a mapping of option: value, got a {type(loaded).__name__}")
    return loaded
