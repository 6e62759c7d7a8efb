"""Training logs: collapse monitors, RUN/stats.jsonl (one line per log interval) and TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


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
                from torch.utils.tensorboard import SummaryWriter
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
