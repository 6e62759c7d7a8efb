"""The pretraining loop: AMP, DDP, exact checkpoint/resume (also on SIGTERM / SIGUSR1 / SIGUSR2), logs.

Order of a step: forward -> backward -> one all-reduce of [loss not finite, a stop signal arrived] -> (stop
before touching the weights if the loss is not finite) -> optimiser step -> (save and stop if a signal
arrived; a single process also acts on a signal that arrived later in the step). Everything that can be wrong
with the input is checked before the model is built (plan.plan_run, UserError).
At the end of an epoch: the online k-NN monitor when due (Hooks.monitor: evaluate/monitor.py, built by the
command; it leaves weights and RNG streams as they were), then the checkpoint when due, which also flushes
RUN/tb so it matches stats.jsonl (logs.py).

Seeding: the model is initialised from config.seed (plan.build_model); a fresh run then seeds every global
RNG with seed + rank, a resumed one restores the saved states (checkpoint.seed_training_rng / restore_rng).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vicregl_cli import distributed
from vicregl_cli.backbones import save_backbone
from vicregl_cli.errors import UserError
from vicregl_cli.interrupts import StopRequest, TrainingInterrupted, resume_command
from vicregl_cli.pretrain.checkpoint import (
    agree_on_resume,
    restore_rng,
    restore_scaler,
    save_training_state,
    seed_training_rng,
)
from vicregl_cli.pretrain.config import PretrainConfig, write_config
from vicregl_cli.pretrain.kernels import tune_cuda_kernels
from vicregl_cli.pretrain.logs import StatsLog, log_record, loss_terms, to_floats
from vicregl_cli.pretrain.optim import build_optimizer, learning_rate, set_learning_rate
from vicregl_cli.pretrain.plan import Plan, autocast, build_model, make_loader, plan_run, to_device
from vicregl_cli.pretrain.sampler import EpochBatchSampler
from vicregl_cli.progress import track


class NonFiniteLoss(RuntimeError):
    """The loss (or the weights) became NaN or inf; nothing non-finite was applied or written to a
    checkpoint."""


class EpochMonitor(Protocol):
    """What the loop asks of a monitor at the end of an epoch (the k-NN one: evaluate/monitor.py)."""

    def due(self, epochs_done: int, epochs: int) -> bool: ...

    def measure(self, backbone: nn.Module, device: str) -> dict[str, float]: ...


@dataclass
class Hooks:
    """Optional callbacks; after_step(global step just finished (1-based), model) runs on every rank; monitor,
    when due, measures the backbone after an epoch (every rank) and its metrics join stats.jsonl."""

    after_step: Callable[[int, nn.Module], None] | None = None
    monitor: EpochMonitor | None = None


@dataclass
class TrainResult:
    """What a call to train() did: the global step it started from and the one it ended at."""

    start_step: int
    end_step: int
    total_steps: int
    out: Path
    stats: list[dict[str, Any]] = field(default_factory=list)


def train(
    config: PretrainConfig,
    *,
    no_resume: bool = False,
    device: str = "auto",
    hooks: Hooks | None = None,
    command_line: list[str] | None = None,
) -> TrainResult:
    """Pretrain (or resume) into config.out; returns the steps done. Raises TrainingInterrupted /
    NonFiniteLoss."""
    hooks = hooks or Hooks()
    monitor = hooks.monitor
    if config.monitor_data is not None and monitor is None:
        raise UserError(
            f"monitor_data {config.monitor_data} is set but no monitor was given: pass "
            "hooks=vicregl_cli.pretrain_hooks.monitor_hooks(config)"
        )
    plan = plan_run(config, device)
    tune_cuda_kernels(plan.env.device)
    env, run_dir = plan.env, Path(config.out)
    checkpoint_path = run_dir / "checkpoint.pth"
    resumed = agree_on_resume(checkpoint_path, config, no_resume, env)
    main = env.rank == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir / "config.yaml", config, command_line or sys.argv, env.world_size)
        if plan.precision != config.precision:
            print(
                f"note: precision {config.precision} needs a GPU; running fp32 on {env.device}",
                file=sys.stderr,
            )

    model = build_model(plan)
    optimizer = build_optimizer(model, config.optimizer, config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=plan.precision == "fp16")
    epoch, batch_in_epoch, step = 0, 0, 0
    if resumed is not None:
        if main:  # the other ranks get these weights from DistributedDataParallel (agree_on_resume)
            model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scaler_note = restore_scaler(scaler, resumed["scaler"])
        if main and scaler_note:
            print(scaler_note, file=sys.stderr)
        epoch, batch_in_epoch, step = (
            resumed["sampler"]["epoch"],
            resumed["sampler"]["batch"],
            resumed["step"],
        )
        restore_rng(resumed["rng"], env, config.seed + step)
        if main:
            print(
                f"resuming {checkpoint_path}: epoch {epoch}, batch {batch_in_epoch}, step {step}",
                file=sys.stderr,
            )
    else:
        seed_training_rng(config.seed, env.rank)
    ddp_model = wrap_ddp(model, env)

    def save(position: tuple[int, int, int]) -> None:  # position: (epoch, batch in the epoch, step)
        _require_finite_weights(model, position[2])
        save_training_state(checkpoint_path, model, optimizer, scaler, position, config, env)
        stats_log.flush()

    sampler = EpochBatchSampler(len(plan.dataset), config.batch_size, env.world_size, env.rank, config.seed)
    loader = make_loader(plan, sampler)
    stats_log = StatsLog(run_dir, enabled=main, start_step=step)
    stop = StopRequest()
    stop.install()
    result = TrainResult(start_step=step, end_step=step, total_steps=plan.total_steps, out=run_dir)
    last_log = (time.perf_counter(), step)
    try:
        with track(
            "pretrain", total=plan.total_steps - step, log_every=config.log_every, enabled=main
        ) as tracker:
            while epoch < config.epochs:
                ddp_model.train()
                sampler.set_epoch(epoch, batch_in_epoch)
                for views, positions, labels in loader:
                    lr = learning_rate(
                        step, plan.peak_lr, plan.warmup_steps, plan.total_steps, config.end_lr_ratio
                    )
                    set_learning_rate(optimizer, lr)
                    where = f"step {step + 1} (epoch {epoch}, batch {batch_in_epoch})"
                    outputs, signum = _step(plan, ddp_model, optimizer, scaler, stop, where, checkpoint_path,
                                            to_device(plan, views, positions, labels))
                    step += 1
                    batch_in_epoch += 1
                    if hooks.after_step is not None:
                        hooks.after_step(step, model)
                    shown = {"epoch": f"{epoch + 1}/{config.epochs}", "lr": lr}
                    if step % config.log_every == 0 or step == plan.total_steps:
                        record = log_record(outputs, epoch, step, lr, config.batch_size, last_log, env)
                        last_log = (time.perf_counter(), step)
                        stats_log.write(record)
                        result.stats.append(record)
                        shown["loss"] = record["loss"]  # read from the device on logging steps only
                    tracker.advance(**shown)
                    if env.world_size == 1:
                        signum = signum or stop.signum  # no other rank to agree with: act on it now
                    if signum:
                        stop.signum = signum
                        save((epoch, batch_in_epoch, step))
                        result.end_step = step
                        stop.chain()
                        command = resume_command(command_line or sys.argv)
                        raise TrainingInterrupted(signum, step, checkpoint_path, command)
                epoch, batch_in_epoch = epoch + 1, 0
                if monitor is not None and monitor.due(epoch, config.epochs):
                    distributed.broadcast_buffers(model.backbone)  # rank 0's BatchNorm statistics
                    record = {"epoch": epoch - 1, "step": step, **monitor.measure(model.backbone, env.device)}
                    stats_log.write(record)
                    result.stats.append(record)
                if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                    save((epoch, 0, step))
        if main:
            save_backbone(run_dir / "backbone.pth", config.backbone, model.backbone.state_dict())
    finally:
        stop.uninstall()
        stats_log.close()
    result.end_step = step
    return result


def _step(plan: Plan, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          stop: StopRequest, where: str, checkpoint: Path, inputs: tuple) -> tuple[dict[str, Tensor], int]:
    """Forward, backward, then one all-reduce of [loss not finite, stop signal]; update only if the loss is
    finite. Reading those two flags is the step's only read from the device (tests/test_host_reads.py)."""
    with autocast(plan):
        outputs = model(*inputs)
    loss = outputs["loss"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    flags = torch.cat([(~torch.isfinite(loss.detach())).float().reshape(1), loss.new_full((1,), stop.signum)])
    if plan.env.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    not_finite, signum = flags.tolist()
    if not_finite:
        terms = {key: round(value, 6) for key, value in to_floats(loss_terms(outputs)).items()}
        last_good = checkpoint if checkpoint.exists() else "none (no checkpoint was written yet)"
        raise NonFiniteLoss(
            f"the loss is not finite at {where}: {terms}; training stopped before updating the weights; "
            f"the last good checkpoint is {last_good}"
        )
    scaler.step(optimizer)
    scaler.update()
    outputs["loss"] = loss.detach()
    return outputs, int(signum)


def _require_finite_weights(model: nn.Module, step: int) -> None:
    """Refuse to checkpoint NaN / inf weights, so the last good checkpoint is kept."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteLoss(
            f"the weights are not finite after step {step}: checkpoint not written; the last good one is kept"
        )


def wrap_ddp(model: nn.Module, env: distributed.DistEnv) -> nn.Module:
    """The model under DistributedDataParallel when several processes train (SyncBatchNorm on GPU only)."""
    if env.world_size == 1:
        return model
    if env.device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[torch.device(env.device).index])
    return DistributedDataParallel(model)
