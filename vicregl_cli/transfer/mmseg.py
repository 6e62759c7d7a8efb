"""`vicregl segment`: one mmseg run (mmengine's Runner) per learning rate through the sweep runner, or the
exported config + weights per learning rate and the commands that train them with mmsegmentation's tools."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

from mmengine.hooks import Hook
from torch import nn

from vicregl_cli.distributed import is_main_process
from vicregl_cli.errors import UserError
from vicregl_cli.progress import track
from vicregl_cli.report import make_result
from vicregl_cli.sweep import SlurmOptions, SweepPoint, point_name, run_sweep
from vicregl_cli.transfer.mmseg_config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SegmentPlan,
    SegmentSettings,
    backbone_state,
    build_config,
    config_text,
    plan_segmentation,
    write_weights,
)

METRIC = "mIoU"
SUMMARY_METRICS = ("mIoU", "aAcc", "mAcc")


def sweep_points(plan: SegmentPlan, lrs: list[float] | None) -> list[SweepPoint]:
    """One point per learning rate (the template's grid when none is given)."""
    values = lrs or plan.default_lrs
    if any(lr <= 0 for lr in values):
        raise UserError(f"learning rates must be positive, got {values}")
    return [SweepPoint(point_name("", lr=float(lr)), {"lr": float(lr)}) for lr in values]


def _header(plan: SegmentPlan, lr: float) -> str:
    settings = plan.settings
    regime = "frozen" if settings.frozen else "fine-tuned"
    return (
        f"Written by `vicregl segment`: {settings.protocol} protocol, {regime} {plan.backbone},"
        f" {settings.dataset}, lr {lr:g}.\nTrains with mmsegmentation's tools/train.py; needs the vicregl"
        " package importable (custom_imports)."
    )


def export_point(plan: SegmentPlan, lr: float, point_dir: Path, weights_from: Path | None = None) -> Path:
    """Write point_dir/config.py and point_dir/backbone.pth, then build the model as mmseg does and check that
    its backbone holds exactly the exported tensors (else a UserError naming the keys). Returns config.py."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import DefaultScope

    from vicregl_cli.transfer.mmseg_models import MODELS, check_backbone_loaded, read_prefixed_backbone

    point_dir.mkdir(parents=True, exist_ok=True)
    weights_path = point_dir / WEIGHTS_FILE
    reuse = weights_from if weights_from is not None and weights_from != weights_path else None
    write_weights(weights_path, {} if reuse else backbone_state(plan), reuse)
    config_path = point_dir / CONFIG_FILE
    temporary = point_dir / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    temporary.write_text(config_text(build_config(plan, lr), _header(plan, lr)))
    os.replace(temporary, config_path)
    cfg = Config.fromfile(str(config_path))
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every tensor at INFO
    try:
        with DefaultScope.overwrite_default_scope("mmseg"):
            model = MODELS.build(cfg.model)
        model.init_weights()
    finally:
        logger.setLevel(level)
    check_backbone_loaded(model.backbone, read_prefixed_backbone(str(weights_path)), str(weights_path))
    return config_path


def train_commands(config_path: Path, gpus: int) -> list[str]:
    """The commands that train an exported config with mmsegmentation's own tools (torchrun, mim)."""
    config = shlex.quote(str(config_path))
    work_dir = shlex.quote(str(config_path.parent))
    launcher = "pytorch" if gpus > 1 else "none"
    train_py = '"$(python -c "import mmseg, os; print(os.path.dirname(mmseg.__file__))")/.mim/tools/train.py"'
    return [
        f"torchrun --nproc_per_node={gpus} {train_py} {config} --launcher pytorch --work-dir {work_dir}",
        f"mim train mmseg {config} --gpus {gpus} --launcher {launcher} --work-dir {work_dir}",
    ]


class ProgressHook(Hook):
    """Shows training and validation through vicregl's progress display; keeps the last validation metrics."""

    priority = "LOW"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self._open = None

    def _start(self, description: str, total: int) -> None:
        self.close()
        self._open = track(description, total, log_every=50, enabled=is_main_process())
        self._tracker = self._open.__enter__()

    def close(self) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None

    def before_train(self, runner) -> None:
        self._start("segment train", runner.max_iters - runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        lr = runner.optim_wrapper.get_lr()["lr"][0]
        self._tracker.advance(loss=float(outputs["loss"].detach()), lr=float(lr))

    def before_val_epoch(self, runner) -> None:
        self._start("segment val", len(runner.val_dataloader))

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._tracker.advance()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = {name: float(value) for name, value in (metrics or {}).items()}
        self.close()
        if runner.iter < runner.max_iters:
            self._start("segment train", runner.max_iters - runner.iter)

    def after_train(self, runner) -> None:
        self.close()


def _launcher() -> str:
    """'pytorch' under torchrun / SLURM with several processes, 'none' for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    return "none"


def train_and_evaluate(config_path: Path, work_dir: Path) -> tuple[dict[str, float], nn.Module]:
    """Train an exported config with mmengine's Runner (resuming a started run in work_dir), evaluate on the
    validation split at the end; returns (metrics of the last validation, trained model)."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from vicregl_cli.transfer.mmseg_shims import (
        register_trusted_checkpoint_loader,
        torch_loads_weights_only_by_default,
    )

    cfg = Config.fromfile(str(config_path))
    cfg.work_dir = str(work_dir)
    cfg.launcher = _launcher()
    cfg.log_level = "WARNING"
    if (work_dir / "last_checkpoint").is_file():
        if torch_loads_weights_only_by_default():
            register_trusted_checkpoint_loader()
        cfg.resume = True
    runner = Runner.from_cfg(cfg)
    hook = ProgressHook()
    runner.register_hook(hook, priority="LOW")
    try:
        model = runner.train()
        if not hook.metrics:  # resumed from a run that had finished training but not its evaluation
            runner.val()
    finally:
        hook.close()
    if not hook.metrics:
        raise RuntimeError(f"the run in {work_dir} finished without a validation result")
    return hook.metrics, model


def run_point(plan: SegmentPlan, point: SweepPoint, run_dir: Path) -> dict:
    """Export, train and evaluate one learning rate; the result record (per-class IoU beside the metrics)."""
    started = time.perf_counter()
    config_path = export_point(plan, point.params["lr"], run_dir)
    metrics, _ = train_and_evaluate(config_path, run_dir)
    settings = plan.settings
    params = {
        "lr": point.params["lr"],
        "frozen": settings.frozen,
        "iters": plan.iters,
        "batch_size": plan.batch_size,
        "crop_size": plan.crop_size,
        "classes": len(plan.class_names),
    }
    summary = {name: round(float(metrics[name]), 2) for name in SUMMARY_METRICS if name in metrics}
    record = make_result(
        protocol=f"segment-{settings.protocol}",
        backbone=plan.backbone,
        weights=settings.weights,
        dataset=f"{settings.dataset}:{Path(settings.data_root).expanduser().resolve()}",
        params=params,
        metrics=summary,
        wall_time_s=time.perf_counter() - started,
    )
    record["per_class_iou"] = {
        name.removeprefix("IoU."): round(float(value), 2)
        for name, value in metrics.items()
        if name.startswith("IoU.")
    }
    return record


def segment(
    settings: SegmentSettings,
    lrs: list[float] | None,
    out_dir: Path,
    export_only: bool = False,
    slurm: SlurmOptions | None = None,
) -> list[dict] | list[Path]:
    """Check everything, then run the sweep (records) or export it (config paths, commands printed)."""
    plan = plan_segmentation(settings)
    points = sweep_points(plan, lrs)
    for note in plan.notes:
        print(f"segment: {note}", file=sys.stderr)
    out_dir = Path(out_dir)
    if export_only:
        configs = []
        first_weights = None
        for point in points:
            configs.append(export_point(plan, point.params["lr"], out_dir / point.name, first_weights))
            first_weights = out_dir / points[0].name / WEIGHTS_FILE
        for config_path in configs:
            print(f"# {config_path.parent.name}")
            for command in train_commands(config_path, settings.processes):
                print(command)
        return configs
    regime = "frozen" if settings.frozen else "fine-tuned"
    title = f"segment {settings.protocol} ({regime} {plan.backbone}, {settings.dataset}, {plan.iters} iters)"
    return run_sweep(out_dir, points, partial(run_point, plan), metric=METRIC, title=title, slurm=slurm)
