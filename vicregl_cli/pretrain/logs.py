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
from vicregl_cli.files import write_text_atomic
from vicregl_cli.tensorboard import ScalarLog

TB_PREFIX = "pretrain/"  # TensorBoard tag of a stats.jsonl key: pretrain/<key>


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
    """RUN/stats.jsonl and the same values as TensorBoard scalars `pretrain/<key>` at their step (RUN/tb/),
    written by the main process only. Opening it for a run that starts at `start_step` drops the lines and
    events of later steps that an earlier session wrote after its last checkpoint: every step shows once."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "stats.jsonl"
        if enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line)["step"] <= start_step]
            write_text_atomic(self.path, "".join(kept))
        self.scalars = ScalarLog(run_dir, enabled=enabled, purge_step=start_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        """Append one line; every float in it (not epoch / step) becomes a scalar at record["step"]."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        values = {key: value for key, value in record.items() if isinstance(value, float)}
        self.scalars.scalars(values, record["step"], prefix=TB_PREFIX)

    def flush(self) -> None:
        """Make the TensorBoard events on disk match stats.jsonl (called at every checkpoint)."""
        self.scalars.flush()

    def close(self) -> None:
        self.scalars.close()


def to_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """One device-to-host copy for a dict of scalar tensors."""
    if not values:
        return {}
    stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()]).tolist()
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
