"""Training logs: collapse monitors, RUN/stats.jsonl (one line per log interval) and TensorBoard scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from vicregl_cli import distributed


def feature_std(x: Tensor) -> Tensor:
    """Mean over dimensions of the batch std of the L2-normalised vectors (1/sqrt(D) when spread, 0 if
    collapsed)."""
    return F.normalize(x.float(), dim=1).std(dim=0).mean()


def mean_abs_correlation(x: Tensor) -> Tensor:
    """Mean |off-diagonal entry| of the correlation matrix of the batch (0: decorrelated dimensions)."""
    x = x.float()
    standardised = (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-5)
    correlation = standardised.T @ standardised / (x.shape[0] - 1)
    dims = correlation.shape[0]
    off_diagonal_sum = correlation.abs().sum() - correlation.diagonal().abs().sum()
    return off_diagonal_sum / (dims * (dims - 1))


class StatsLog:
    """Appends JSON lines to RUN/stats.jsonl and mirrors them to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "stats.jsonl"
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional package: local import
            except ImportError:
                SummaryWriter = None  # noqa: N806 - tensorboard is optional
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def to_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """One device-to-host copy for a dict of scalar tensors."""
    if not values:
        return {}
    stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()]).cpu().tolist()
    return dict(zip(values, stacked, strict=True))


def loss_terms(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The loss and its logged terms (global_*, local_*, probe_*) from the model's outputs: what the stats
    log and the non-finite-loss error report."""
    keys = [k for k in outputs if k.startswith(("global_", "local_", "probe_"))]
    return {"loss": outputs["loss"].detach(), **{k: outputs[k] for k in keys}}


def log_record(
    outputs: dict[str, Tensor],
    epoch: int,
    step: int,
    lr: float,
    batch_size: int,
    last_log: tuple[float, int],
    env: distributed.DistEnv,
) -> dict[str, Any]:
    """One stats.jsonl line: loss terms and collapse monitors averaged over ranks (monitors on the gathered
    first view), and the throughput since `last_log` (time, step); every rank must call it."""
    values = loss_terms(outputs)
    with torch.no_grad():
        representation = distributed.gather_with_grad(outputs["representation"])
        values["repr_std"] = feature_std(representation)
        values["repr_corr"] = mean_abs_correlation(representation)
        if "embedding" in outputs:
            embedding = distributed.gather_with_grad(outputs["embedding"])
            values["emb_std"] = feature_std(embedding)
            values["emb_corr"] = mean_abs_correlation(embedding)
    if env.world_size > 1:
        stacked = torch.stack([value.float() for value in values.values()])
        dist.all_reduce(stacked)
        values = dict(zip(values, stacked / env.world_size, strict=True))
    elapsed = time.perf_counter() - last_log[0]
    record: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
    record.update({key: round(value, 6) for key, value in to_floats(values).items()})
    record["samples_per_s"] = round((step - last_log[1]) * batch_size / elapsed, 2) if elapsed > 0 else 0.0
    return record
