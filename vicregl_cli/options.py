"""The run options every subcommand shares (--device, --dry-run, the --slurm group) and the one place that
turns the SLURM options into a submitit executor."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vicregl_cli.errors import UserError

CLUSTERS = ("slurm", "local")


SIGNAL_DELAY_S = 120  # requeued jobs get SIGUSR2 this long before the time limit: time to save a checkpoint
MAX_REQUEUES = 30  # time-limit requeues of a job that resumes (pretraining, detection)

@dataclass(frozen=True)
class SlurmOptions:
    """One SLURM job's resources; cluster "local" runs the job through submitit's local executor instead."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 10
    time_min: int = 24 * 60
    account: str | None = None
    qos: str | None = None
    mem_gb: int | None = None
    cluster: str = "slurm"
    folder: Path | None = None  # submitit's logs and pickles; default <out>/slurm/%j
    constraint: str | None = None
    additional: dict[str, Any] = field(default_factory=dict)
    one_task_per_node: bool = False  # the job starts its own per-GPU workers (detectron2's launcher)

    @property
    def tasks_per_node(self) -> int:
        """Processes per node: one per GPU (at least one), or one that launches the node's GPUs itself."""
        return 1 if self.one_task_per_node else max(1, self.gpus_per_node)

    @property
    def tasks(self) -> int:
        """Processes per job."""
        return self.nodes * self.tasks_per_node

    def check(self) -> None:
        """Option errors that need no cluster."""
        if self.cluster not in CLUSTERS:
            raise UserError(f"--slurm-cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        if self.nodes < 1 or self.gpus_per_node < 0 or self.cpus_per_task < 1 or self.time_min < 1:
            raise UserError("--nodes and --cpus-per-task must be >= 1, --gpus-per-node >= 0, --time >= 1")


@dataclass(frozen=True)
class RunOptions:
    """Where and how a command runs: device, plan only, or one SLURM job per sweep point."""

    device: str | None = None  # None / "auto": cuda when visible
    dry_run: bool = False
    slurm: SlurmOptions | None = None


@dataclass(frozen=True)
class FeatureOptions:
    """How the frozen-feature protocols (knn, linear) view and cache the images."""

    image_size: int = 224
    resize: int = 256
    num_workers: int = 8
    cache_dir: Path | None = None
    recalibrate_bn: bool | None = None
    bn_batches: int = 100


def default_cache_dir() -> Path:
    """$VICREGL_CACHE, else $XDG_CACHE_HOME/vicregl/features, else ~/.cache/vicregl/features."""
    if os.environ.get("VICREGL_CACHE"):
        return Path(os.environ["VICREGL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vicregl" / "features"


def executor_parameters(slurm: SlurmOptions, name: str, **extra: Any) -> dict[str, Any]:
    """submitit's `update_parameters` of one job (what `--dry-run` prints and the executor receives)."""
    parameters: dict[str, Any] = {
        "name": name[:64].replace(" ", "_") or "vicregl",
        "nodes": slurm.nodes,
        "gpus_per_node": slurm.gpus_per_node,
        "tasks_per_node": slurm.tasks_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "timeout_min": slurm.time_min,
        **extra,
    }
    if slurm.mem_gb is not None:
        parameters["mem_gb"] = slurm.mem_gb
    if slurm.cluster == "slurm":
        cluster_only = {
            "slurm_partition": slurm.partition,
            "slurm_account": slurm.account,
            "slurm_qos": slurm.qos,
            "slurm_constraint": slurm.constraint,
            "slurm_additional_parameters": slurm.additional or None,
        }
        parameters.update({key: value for key, value in cluster_only.items() if value is not None})
    else:  # the local executor takes no node, CPU or memory requests
        for key in ("nodes", "cpus_per_task", "mem_gb"):
            parameters.pop(key, None)
    return parameters


def make_executor(
    slurm: SlurmOptions, folder: Path, name: str, max_requeues: int | None = None, **extra: Any
) -> Any:
    """A submitit AutoExecutor for `slurm`, logs under `folder` (created only here, when submitting);
    `max_requeues` bounds pre-emption requeues, `extra` adds job parameters (e.g. slurm_signal_delay_s)."""
    slurm.check()
    try:
        import submitit  # optional: only --slurm needs it
    except ImportError as error:
        raise UserError("--slurm needs submitit: pip install 'vicregl[slurm]'") from error
    limits = {} if max_requeues is None else {"slurm_max_num_timeout": max_requeues}
    executor = submitit.AutoExecutor(folder=slurm.folder or folder, cluster=slurm.cluster, **limits)
    executor.update_parameters(**executor_parameters(slurm, name, **extra))
    return executor
