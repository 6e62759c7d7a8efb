"""RUN/checkpoint.pth: written atomically (temporary file + rename), read back with weights_only=True.

Besides model / optimiser / scaler it holds every RNG state (torch CPU, every CUDA device, numpy, python) of
every rank and the sampler position, so that a resumed run continues exactly where the interrupted one
stopped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicregl_cli.errors import UserError


def rng_state() -> dict[str, Any]:
    """Every global RNG state of this process, as tensors / plain values (weights_only-safe)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves a partial
    checkpoint."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of save_checkpoint; a file that is not one is a UserError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise UserError(
            f"{path} is not a readable pretraining checkpoint ({error}); move it away to start over"
        ) from error
    missing = [
        key
        for key in ("backbone_name", "model", "optimizer", "sampler", "step", "config")
        if key not in payload
    ]
    if missing:
        raise UserError(
            f"{path} is not a pretraining checkpoint (no {', '.join(missing)}); move it away to start over"
        )
    return payload
