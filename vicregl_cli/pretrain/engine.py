"""The pretraining loop: AMP, DDP, exact checkpoint/resume (also on SIGTERM / SIGUSR1 / SIGUSR2), logs, dry
run.

Order of a step: forward -> backward -> one all-reduce of [loss not finite, a stop signal arrived] -> (stop
before touching the weights if the loss is not finite) -> optimiser step -> (save and stop if a signal
arrived; a single process also acts on a signal that arrived later in the step). Everything that can be wrong
with the input is checked before the model is built (UserError).
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vicregl_cli import distributed
from vicregl_cli.backbones import BackboneSpec, build_backbone, get_spec, save_backbone
from vicregl_cli.data.multicrop import MultiCropConfig, MultiCropTransform, collate
from vicregl_cli.data.readers import image_folder
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vicregl_cli.pretrain.config import PretrainConfig, to_dict, write_config
from vicregl_cli.pretrain.logs import StatsLog, feature_std, mean_abs_correlation, to_floats
from vicregl_cli.pretrain.model import LossWeights, VICRegL
from vicregl_cli.pretrain.optim import build_optimizer, learning_rate, peak_lr, set_learning_rate
from vicregl_cli.pretrain.sampler import EpochBatchSampler, SeededSamples
from vicregl_cli.progress import track

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # SIGUSR2: submitit's pre-emption signal
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
DRY_RUN_BATCH = 16


class TrainingInterrupted(Exception):
    """A stop signal arrived: the current step finished and RUN/checkpoint.pth was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved to {checkpoint}; "
            "run the same command again to resume"
        )
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss (or the weights) became NaN or inf; nothing non-finite was applied or written to a
    checkpoint."""


@dataclass
class Hooks:
    """Optional callbacks; after_step(global step just finished (1-based), model) runs on every rank."""

    after_step: Callable[[int, nn.Module], None] | None = None


@dataclass
class TrainResult:
    """What a call to train() did: the global step it started from and the one it ended at."""

    start_step: int
    end_step: int
    total_steps: int
    out: Path
    stats: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """The validated inputs of a run, built before any model exists."""

    config: PretrainConfig
    env: distributed.DistEnv
    spec: BackboneSpec
    dataset: SeededSamples
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    precision: str


def resolve_device(device: str) -> str:
    """'auto' -> cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def multicrop_config(config: PretrainConfig, stride: int) -> MultiCropConfig:
    """The multi-crop transform of the run: group 0 = the large views, group 1 (optional) = the small
    views."""
    small = {}
    if len(config.crop_sizes) == 2:
        small = dict(
            small_size=config.crop_sizes[1],
            small_count=config.crop_counts[1],
            small_scale=(config.crop_min_scales[1], config.crop_max_scales[1]),
        )
    return MultiCropConfig(
        large_size=config.crop_sizes[0],
        large_count=config.crop_counts[0],
        large_scale=(config.crop_min_scales[0], config.crop_max_scales[0]),
        stride=stride,
        ignore_flip=config.ignore_flips,
        **small,
    )


def plan_run(config: PretrainConfig, device: str = "auto") -> Plan:
    """Join the process group and check everything that needs no model: world size, backbone, crops, data."""
    env = distributed.init_distributed(resolve_device(device))
    if config.batch_size % env.world_size:
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by the {env.world_size} processes: "
            f"choose a multiple of {env.world_size}"
        )
    spec = get_spec(config.backbone)
    grids = [size // spec.output_stride for size in config.crop_sizes]
    if min(grids) < 1:
        raise UserError(
            f"crop sizes {config.crop_sizes} give feature grids {grids} at stride {spec.output_stride} of "
            f"{config.backbone}: every crop must be at least {spec.output_stride} pixels"
        )
    if config.alpha < 1.0:
        locations = [grid * grid for grid in grids]
        if config.num_matches[0] > locations[0] or config.num_matches[1] > min(locations):
            raise UserError(
                f"num_matches {config.num_matches} exceeds the locations per view {locations} "
                f"(first: large views, {locations[0]}; second: any view, {min(locations)}); "
                "lower --num-matches"
            )
    if not config.data:
        raise UserError("no training data: pass --data DIR (an ImageFolder: DIR/<class>/<image>)")
    folder = image_folder(
        Path(config.data), transform=MultiCropTransform(multicrop_config(config, spec.output_stride))
    )
    if len(folder) < config.batch_size:
        raise UserError(
            f"{config.data} holds {len(folder)} images, fewer than one batch of {config.batch_size}: "
            "lower --batch-size"
        )
    steps_per_epoch = len(folder) // config.batch_size
    precision = config.precision if env.device.startswith("cuda") else "fp32"
    return Plan(
        config=config,
        env=env,
        spec=spec,
        dataset=SeededSamples(folder),
        num_classes=len(folder.classes) if config.probe else 0,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
        warmup_steps=steps_per_epoch * config.warmup_epochs,
        peak_lr=peak_lr(config.base_lr, config.batch_size),
        precision=precision,
    )


def build_model(plan: Plan) -> VICRegL:
    """Backbone + heads, initialised from the seed (identical on every rank), on the run's device."""
    config = plan.config
    torch.manual_seed(config.seed)
    overrides = {"drop_path_rate": config.drop_path_rate} if plan.spec.family == "convnext" else {}
    weights = LossWeights(
        alpha=config.alpha,
        num_matches=tuple(config.num_matches),
        l2_all_matches=config.l2_all_matches,
        inv_coeff=config.inv_coeff,
        var_coeff=config.var_coeff,
        cov_coeff=config.cov_coeff,
    )
    model = VICRegL(
        build_backbone(config.backbone, **overrides),
        config.mlp_widths(),
        config.maps_mlp_widths(),
        weights,
        num_classes=plan.num_classes,
    )
    model = model.to(plan.env.device)
    if plan.env.device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def make_loader(plan: Plan, sampler: EpochBatchSampler) -> DataLoader:
    """Batches of this rank; a private generator keeps the loader from drawing on the global torch RNG."""
    workers = plan.config.num_workers
    return DataLoader(
        plan.dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=plan.env.device.startswith("cuda"),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(plan.config.seed),
    )


def describe(plan: Plan) -> dict[str, Any]:
    """The figures a dry run prints (and train() logs at start)."""
    return {
        "world_size": plan.env.world_size,
        "device": plan.env.device,
        "precision": plan.precision,
        "per_process_batch": plan.config.batch_size // plan.env.world_size,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "warmup_steps": plan.warmup_steps,
        "peak_lr": plan.peak_lr,
        "images": len(plan.dataset),
        "classes_for_probe": plan.num_classes,
    }


def dry_run(config: PretrainConfig, device: str = "auto") -> dict[str, Any]:
    """Resolve and validate everything, build the model, load one batch and run it forward; train nothing."""
    plan = plan_run(config, device)
    model = build_model(plan)
    count = min(DRY_RUN_BATCH, config.batch_size // plan.env.world_size)
    views, positions, labels = collate([plan.dataset[(index, index)] for index in range(count)])
    model.train()
    with torch.no_grad(), _autocast(plan):
        outputs = model(*_to_device(plan, views, positions, labels))
    summary = describe(plan)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary["view_shapes"] = [list(view.shape) for view in views]
    summary["positions_shapes"] = [list(position.shape) for position in positions]
    summary["first_batch_loss"] = float(outputs["loss"])
    return summary


def _autocast(plan: Plan):
    if plan.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _to_device(plan: Plan, views, positions, labels):
    device = plan.env.device
    memory_format = torch.channels_last if device.startswith("cuda") else torch.contiguous_format
    views = [view.to(device, non_blocking=True, memory_format=memory_format) for view in views]
    positions = [position.to(device, non_blocking=True) for position in positions]
    labels = labels.to(device, non_blocking=True) if plan.num_classes else None
    return views, positions, labels


class _StopRequest:
    """Signal handlers that only record the signal; the loop acts on it after the current step."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def chain(self) -> None:
        """Hand the signal to the handler that was installed before (submitit's requeue hook, for one)."""
        handler = self.previous.get(self.signum)
        self.uninstall()
        if callable(handler):
            handler(self.signum, None)


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
    plan = plan_run(config, device)
    env, run_dir = plan.env, Path(config.out)
    checkpoint_path = run_dir / "checkpoint.pth"
    resumed = None
    if checkpoint_path.exists():
        if no_resume:
            raise UserError(
                f"{checkpoint_path} exists and --no-resume was given: choose another --out or remove it"
            )
        resumed = load_checkpoint(checkpoint_path)
        _check_resumable(resumed, config, checkpoint_path)
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
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        epoch, batch_in_epoch, step = (
            resumed["sampler"]["epoch"],
            resumed["sampler"]["batch"],
            resumed["step"],
        )
        _restore_rng(resumed["rng"], env, config.seed + step)
        if main:
            print(
                f"resuming {checkpoint_path}: epoch {epoch}, batch {batch_in_epoch}, step {step}",
                file=sys.stderr,
            )
    else:
        _seed_training_rng(config.seed, env.rank)
    ddp_model = _wrap(model, env)

    sampler = EpochBatchSampler(len(plan.dataset), config.batch_size, env.world_size, env.rank, config.seed)
    loader = make_loader(plan, sampler)
    stats_log = StatsLog(run_dir, enabled=main)
    stop = _StopRequest()
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
                                            _to_device(plan, views, positions, labels))
                    step += 1
                    batch_in_epoch += 1
                    if hooks.after_step is not None:
                        hooks.after_step(step, model)
                    if step % config.log_every == 0 or step == plan.total_steps:
                        record = _log_record(outputs, epoch, step, lr, config.batch_size, last_log, env)
                        last_log = (time.perf_counter(), step)
                        stats_log.write(record)
                        result.stats.append(record)
                    tracker.advance(epoch=f"{epoch + 1}/{config.epochs}", loss=float(outputs["loss"]), lr=lr)
                    if env.world_size == 1:
                        signum = signum or stop.signum  # no other rank to agree with: act on it now
                    if signum:
                        stop.signum = signum
                        _save(
                            checkpoint_path,
                            model,
                            optimizer,
                            scaler,
                            epoch,
                            batch_in_epoch,
                            step,
                            config,
                            env,
                        )
                        result.end_step = step
                        stop.chain()
                        raise TrainingInterrupted(signum, step, checkpoint_path)
                epoch, batch_in_epoch = epoch + 1, 0
                if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                    _save(checkpoint_path, model, optimizer, scaler, epoch, 0, step, config, env)
        if main:
            save_backbone(run_dir / "backbone.pth", config.backbone, model.backbone.state_dict())
    finally:
        stop.uninstall()
        stats_log.close()
    result.end_step = step
    return result


def _step(plan: Plan, model: nn.Module, optimizer, scaler, stop: _StopRequest, where: str, checkpoint: Path,
          inputs) -> tuple[dict[str, torch.Tensor], int]:
    """Forward, backward, then one all-reduce of [loss not finite, stop signal]; update only if the loss is
    finite."""
    with _autocast(plan):
        outputs = model(*inputs)
    loss = outputs["loss"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    flags = torch.stack([(~torch.isfinite(loss.detach())).float(), loss.new_tensor(float(stop.signum))])
    if plan.env.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    not_finite, signum = flags.tolist()
    if not_finite:
        terms = {key: round(value, 6) for key, value in to_floats(_loss_terms(outputs)).items()}
        last_good = checkpoint if checkpoint.exists() else "none (no checkpoint was written yet)"
        raise NonFiniteLoss(
            f"the loss is not finite at {where}: {terms}; training stopped before updating the weights; "
            f"the last good checkpoint is {last_good}"
        )
    scaler.step(optimizer)
    scaler.update()
    outputs["loss"] = loss.detach()
    return outputs, int(signum)


def _check_resumable(payload: dict[str, Any], config: PretrainConfig, path: Path) -> None:
    """Refuse a checkpoint of another backbone (or another batch / seed / head / crops layout)."""
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


def _seed_training_rng(seed: int, rank: int) -> None:
    """Distinct streams per rank (drop-path masks), reproducible from the seed."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def _restore_rng(states: list[dict[str, Any]], env: distributed.DistEnv, seed: int) -> None:
    """Each rank takes its own saved state; another number of processes re-seeds from seed + step."""
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
    _seed_training_rng(seed, env.rank)


def _wrap(model: nn.Module, env: distributed.DistEnv) -> nn.Module:
    if env.world_size == 1:
        return model
    if env.device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[env.local_rank])
    return DistributedDataParallel(model)


def _save(
    path: Path,
    model: VICRegL,
    optimizer,
    scaler,
    epoch: int,
    batch: int,
    step: int,
    config: PretrainConfig,
    env: distributed.DistEnv,
) -> None:
    """Rank 0 writes every rank's RNG state with the model, optimiser and sampler position (finite weights
    only)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteLoss(
            f"the weights are not finite after step {step}: checkpoint not written; the last good one is kept"
        )
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


def _loss_terms(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = [k for k in outputs if k.startswith(("global_", "local_", "probe_"))]
    return {"loss": outputs["loss"].detach(), **{k: outputs[k] for k in keys}}


def _log_record(
    outputs: dict[str, torch.Tensor],
    epoch: int,
    step: int,
    lr: float,
    batch_size: int,
    last_log: tuple[float, int],
    env: distributed.DistEnv,
) -> dict[str, Any]:
    """Loss terms and collapse monitors averaged over ranks (monitors on the gathered first view)."""
    values = _loss_terms(outputs)
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


def print_summary(summary: dict[str, Any], config: PretrainConfig) -> None:
    """The dry-run report (rank 0 only): resolved configuration, then the figures."""
    if not distributed.is_main_process():
        return
    print(yaml.safe_dump({"config": to_dict(config)}, sort_keys=False), end="")
    for key, value in summary.items():
        print(f"{key}: {value}")
