"""RUN/checkpoint.pth of the torchvision engine: model, optimiser, iterations done and the RNG states, written
atomically every `checkpoint_every` iterations, at the end of training and when a stop signal arrives
(SIGTERM / SIGUSR1 / SIGUSR2, as pretraining), so that a run requeued by SLURM or started again resumes
exactly. The atomic write and RNG capture are vicregl_cli/rng_state.py's, the signal handling is
vicregl_cli/interrupts.py's (both shared with pretraining)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicregl_cli.errors import UserError
from vicregl_cli.rng_state import rng_state, save_checkpoint
from vicregl_cli.transfer.tv_detection.settings import DetectionSettings

CHECKPOINT = "checkpoint.pth"
# Settings a resumed run must share with the interrupted one (the others do not change the weights).
MUST_MATCH = ("iters", "batch_size", "base_lr", "momentum", "weight_decay", "warmup_iters", "step_fractions",
              "min_sizes", "max_size", "rpn_batch_per_image", "rois_per_image", "proposals_train", "seed",
              "frozen")  # fmt: skip


def save_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, done: int, settings: DetectionSettings
) -> None:
    """Write the training state after `done` iterations (atomic: a crash keeps the previous file)."""
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": done,
            "rng": rng_state(),
            "settings": {key: _plain(getattr(settings, key)) for key in MUST_MATCH},
        },
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_state(path: Path, settings: DetectionSettings) -> dict[str, Any]:
    """A checkpoint of this run: refused (UserError, with what differs) when it is unreadable or was written
    with other settings, which would silently continue a different run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise UserError(f"{path} is not a readable detection checkpoint ({error}); move it away") from error
    current = {key: _plain(value) for key, value in asdict(settings).items() if key in MUST_MATCH}
    saved = state.get("settings", {})
    differing = [key for key in MUST_MATCH if saved.get(key) != current[key]]
    if differing:
        changes = ", ".join(f"{key} {saved.get(key)} -> {current[key]}" for key in differing)
        raise UserError(f"{path} was written with other settings ({changes}): resume with the same ones, "
                        "or remove it to start this run over")  # fmt: skip
    return state
