"""RUN/checkpoint.pth: written atomically (temporary file + rename), read back with weights_only=True.

Besides model / optimiser / scaler it holds every RNG state (torch CPU, every CUDA device, numpy, python) of
every rank and the sampler position, so that a resumed run continues exactly where the interrupted one
stopped (the RNG capture and the atomic write: vicregl_cli/rng_state.py). The training loop's seeding lives
here too: seed_training_rng for a fresh run, restore_rng on resume.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vicregl_cli.distributed import DistEnv
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.config import PretrainConfig, to_dict
from vicregl_cli.rng_state import rng_state, save_checkpoint, set_rng_state

MUST_MATCH_ON_RESUME = (
    "backbone",
    "batch_size",
    "seed",
    "mlp",
    "maps_mlp",
    "alpha",
    "probe",
    "crop_sizes",
    "crop_counts",
)


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


def check_resumable(payload: dict[str, Any], config: PretrainConfig, path: Path) -> None:
    """Refuse a checkpoint of another backbone (or another batch / seed / head / crops layout): resuming it
    would silently train a different run."""
    if payload["backbone_name"] != config.backbone:
        raise UserError(
            f"{path} holds a {payload['backbone_name']} run but --backbone is {config.backbone}: "
            "use the same backbone to resume, or another --out to start a new run"
        )
    saved = payload["config"]
    current = to_dict(config)
    differing = [key for key in MUST_MATCH_ON_RESUME if saved.get(key) != current[key]]
    if differing:
        changes = ", ".join(f"{key} {saved.get(key)} -> {current[key]}" for key in differing)
        raise UserError(
            f"{path} was written with other settings ({changes}): resume with the same ones, "
            "or choose another --out"
        )


def agree_on_resume(
    path: Path, config: PretrainConfig, no_resume: bool, env: DistEnv
) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a fresh run, decided by rank 0 alone and sent to every rank:
    ranks that see `--out` differently (node-local disks, NFS caches) never disagree. Rank 0 refusing it
    (UserError) stops every rank with the same line. The other ranks get everything but the weights, which
    DistributedDataParallel broadcasts from rank 0 when it wraps the model."""
    verdict: dict[str, Any] | UserError | None = None
    if env.rank == 0:
        try:
            verdict = _read_for_resume(path, config, no_resume)
        except UserError as error:
            verdict = error
    if env.world_size > 1:
        shared = [{key: value for key, value in verdict.items() if key != "model"}
                  if isinstance(verdict, dict) else verdict]  # fmt: skip
        dist.broadcast_object_list(shared, src=0)
        verdict = verdict if env.rank == 0 else shared[0]
    if isinstance(verdict, UserError):
        raise verdict
    return verdict


def _read_for_resume(path: Path, config: PretrainConfig, no_resume: bool) -> dict[str, Any] | None:
    if not path.exists():
        return None
    if no_resume:
        raise UserError(f"{path} exists and --no-resume was given: choose another --out or remove it")
    payload = load_checkpoint(path)
    check_resumable(payload, config, path)
    return payload


def restore_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> str:
    """Load the fp16 loss scaler's state; a checkpoint written without one (bf16, fp32, CPU) leaves a fresh
    scaler -> the note saying so ("" when there is nothing to say)."""
    if scaler.is_enabled() and not state:
        return (
            "note: the checkpoint was written without fp16 loss scaling (bf16, fp32 or CPU): fp16 starts "
            f"with a fresh GradScaler (scale {scaler.get_scale():g})"
        )
    scaler.load_state_dict(state)
    return ""


def seed_training_rng(seed: int, rank: int) -> None:
    """The training loop's seeding of every global RNG: distinct streams per rank (drop-path masks),
    reproducible from the seed."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def restore_rng(states: list[dict[str, Any]], env: DistEnv, seed: int) -> None:
    """On resume, each rank takes its own saved state; another number of processes re-seeds from `seed`
    (the caller passes seed + step)."""
    if len(states) == env.world_size:
        set_rng_state(states[env.rank])
        return
    if env.rank == 0:
        print(
            f"note: the checkpoint holds RNG states of {len(states)} processes, this run has "
            f"{env.world_size}: "
            "the data order and augmentations are unchanged, the model's random streams are re-seeded",
            file=sys.stderr,
        )
    seed_training_rng(seed, env.rank)


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    position: tuple[int, int, int],
    config: PretrainConfig,
    env: DistEnv,
) -> None:
    """Write RUN/checkpoint.pth from rank 0 with every rank's RNG state, so a resume is exact; every rank
    must call it. `position` is (epoch, batch in the epoch, global step)."""
    epoch, batch, step = position
    states = [rng_state()]
    if env.world_size > 1:
        states = [None] * env.world_size
        dist.all_gather_object(states, rng_state())
    if env.rank == 0:
        save_checkpoint(
            path,
            {
                "backbone_name": config.backbone,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "rng": states,
                "sampler": {"epoch": epoch, "batch": batch, "seed": config.seed},
                "config": to_dict(config),
            },
        )
    if env.world_size > 1:
        dist.barrier()
