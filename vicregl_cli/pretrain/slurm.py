"""`vicregl pretrain --slurm`: submit the run through submitit, one task per GPU, requeued on pre-emption.

SLURM sends SIGUSR2 (submitit's pre-emption signal) 120 s before the time limit or on pre-emption. The
engine's handler finishes the current step, writes RUN/checkpoint.pth, then hands the signal to submitit's
handler, which calls PretrainJob.checkpoint() -> a DelayedSubmission of the same job -> requeue. The requeued
job finds the checkpoint and resumes from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.config import PretrainConfig


@dataclass
class SlurmRequest:
    """Resources of the job; cluster 'local' runs it through submitit's local executor (tests, debugging)."""

    nodes: int = 1
    gpus_per_node: int = 8
    partition: str = ""
    time_min: int = 4320
    cpus_per_task: int = 10
    mem_gb_per_gpu: int = 40
    folder: str = ""  # submitit logs and pickles; default RUN/slurm
    cluster: str | None = None  # None: SLURM when available; "local" for the local executor


class PretrainJob:
    """The pickled callable submitit runs on every task; checkpoint() requeues the same job."""

    def __init__(self, config: PretrainConfig, device: str = "auto") -> None:
        self.config = config
        self.device = device

    def __call__(self) -> dict[str, Any]:
        from vicregl_cli.pretrain.engine import train

        result = train(self.config, device=self.device, command_line=["vicregl", "pretrain", "--slurm"])
        return {
            "start_step": result.start_step,
            "end_step": result.end_step,
            "total_steps": result.total_steps,
        }

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(PretrainJob(self.config, self.device))


def submit(config: PretrainConfig, request: SlurmRequest) -> Any:
    """Submit the run; returns the submitit Job (job.job_id, job.result())."""
    try:
        import submitit
    except ImportError as error:
        raise UserError("--slurm needs submitit: pip install 'vicregl[slurm]'") from error
    if request.nodes < 1 or request.gpus_per_node < 0 or request.time_min < 1:
        raise UserError("--nodes must be >= 1, --gpus-per-node >= 0 and --time >= 1 minute")
    tasks_per_node = max(1, request.gpus_per_node)
    world_size = request.nodes * tasks_per_node
    if config.batch_size % world_size:
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by the {world_size} tasks "
            f"({request.nodes} nodes x {tasks_per_node}): choose a multiple of {world_size}"
        )
    folder = Path(request.folder or Path(config.out) / "slurm")
    executor = submitit.AutoExecutor(folder=folder, cluster=request.cluster, slurm_max_num_timeout=30)
    parameters: dict[str, Any] = dict(
        name=f"vicregl-{config.backbone}",
        nodes=request.nodes,
        gpus_per_node=request.gpus_per_node,
        tasks_per_node=tasks_per_node,
        cpus_per_task=request.cpus_per_task,
        timeout_min=request.time_min,
        slurm_signal_delay_s=120,
    )
    if request.gpus_per_node:
        parameters["mem_gb"] = request.mem_gb_per_gpu * request.gpus_per_node
    if request.partition:
        parameters["slurm_partition"] = request.partition
    if executor.cluster == "local":
        parameters = {k: v for k, v in parameters.items() if k not in ("nodes", "cpus_per_task", "mem_gb")}
    executor.update_parameters(**parameters)
    return executor.submit(PretrainJob(dataclasses.replace(config)))
