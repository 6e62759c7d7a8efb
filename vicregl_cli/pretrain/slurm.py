"""`vicregl pretrain --slurm`: submit the run through submitit, one task per GPU, requeued on pre-emption.

SLURM sends SIGUSR2 (submitit's pre-emption signal) 120 s before the time limit or on pre-emption. The
training loop's handler finishes the current step, writes RUN/checkpoint.pth, then hands the signal to
submitit's handler, which calls PretrainJob.checkpoint() -> a DelayedSubmission of the same job -> requeue.
The requeued job finds the checkpoint and resumes from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vicregl_cli.backbones.registry import get_spec
from vicregl_cli.errors import UserError
from vicregl_cli.files import check_writable_folder
from vicregl_cli.options import MAX_REQUEUES, SIGNAL_DELAY_S, SlurmOptions, executor_parameters, make_executor
from vicregl_cli.pretrain.config import PretrainConfig, to_dict, validate
from vicregl_cli.pretrain.loop import Hooks, train
from vicregl_cli.pretrain.plan import training_folder


class PretrainJob:
    """The pickled callable submitit runs on every task; checkpoint() requeues the same job. `make_hooks`
    (a module-level function, pickled by name) builds the loop's hooks in the task, e.g. the k-NN monitor."""

    def __init__(
        self,
        config: PretrainConfig,
        device: str | None = None,
        make_hooks: Callable[[PretrainConfig], Hooks] | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.make_hooks = make_hooks

    def __call__(self) -> dict[str, Any]:
        hooks = self.make_hooks(self.config) if self.make_hooks is not None else None
        command_line = ["vicregl", "pretrain", "--slurm"]
        result = train(self.config, device=self.device, hooks=hooks, command_line=command_line)
        return {
            "start_step": result.start_step,
            "end_step": result.end_step,
            "total_steps": result.total_steps,
        }

    def checkpoint(self) -> Any:
        import submitit  # optional: only --slurm needs it

        return submitit.helpers.DelayedSubmission(PretrainJob(self.config, self.device, self.make_hooks))


def _checked(config: PretrainConfig, slurm: SlurmOptions) -> str:
    """Validate the config and the job's world size before anything is submitted; the job's name."""
    validate(config)
    get_spec(config.backbone)
    if not training_folder(config.data).is_dir():
        raise UserError(f"--data {config.data!r} is not a folder (an ImageFolder: DATA/<class>/<image>)")
    check_writable_folder(config.out)
    slurm.check()
    if config.batch_size % slurm.tasks:
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by the {slurm.tasks} tasks "
            f"({slurm.nodes} nodes x {max(1, slurm.gpus_per_node)}): choose a multiple of {slurm.tasks}"
        )
    return f"vicregl-{config.backbone}"


def print_job(config: PretrainConfig, slurm: SlurmOptions) -> None:
    """`--slurm --dry-run`: the resolved config and the job that would be submitted; submits nothing."""
    name = _checked(config, slurm)
    parameters = executor_parameters(slurm, name, slurm_signal_delay_s=SIGNAL_DELAY_S)
    print(yaml.safe_dump({"config": to_dict(config)}, sort_keys=False), end="")
    print(f"would submit 1 job ({slurm.cluster}, {slurm.tasks} tasks, requeued up to {MAX_REQUEUES} times): "
          f"{parameters}")
    print(f"logs under {slurm.folder or Path(config.out) / 'slurm'}")
    print("dry run: nothing was trained, written or submitted")


def submit(
    config: PretrainConfig,
    slurm: SlurmOptions,
    device: str | None = None,
    make_hooks: Callable[[PretrainConfig], Hooks] | None = None,
) -> Any:
    """Submit the run; returns the submitit Job (job.job_id, job.result()). Each task builds its loop hooks
    with `make_hooks(config)` (the caller checks them before submitting)."""
    name = _checked(config, slurm)
    folder = Path(config.out) / "slurm"
    executor = make_executor(
        slurm, folder, name, max_requeues=MAX_REQUEUES, slurm_signal_delay_s=SIGNAL_DELAY_S
    )
    return executor.submit(PretrainJob(dataclasses.replace(config), device, make_hooks))
