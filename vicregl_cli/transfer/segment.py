"""`vicregl segment` in the protocol shape: `plan` checks everything and returns one sweep point per learning
rate, `run_point` exports, trains (mmengine's Runner) and evaluates one; `export_points` writes the config and
weights of each point for mmsegmentation's own tools (--export-only)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor, nn

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.distributed import is_main_process, slurm_tasks
from vicregl_cli.export import complete_state, export_prefixed
from vicregl_cli.files import write_json_atomic, write_text_atomic
from vicregl_cli.sweep import SweepPoint, check_points, point_name
from vicregl_cli.transfer.mmseg_shims import (
    register_trusted_checkpoint_loader,
    torch_loads_weights_only_by_default,
)
from vicregl_cli.transfer.segment_config import CONFIG_FILE, WEIGHTS_FILE, build_config, config_text
from vicregl_cli.transfer.segment_plan import SegmentPlan, SegmentSettings, check_settings

METRIC = "mIoU"
SUMMARY_METRICS = ("mIoU", "aAcc", "mAcc")
PER_CLASS_FILE = "per_class_iou.json"  # beside result.json: {class name: IoU in percent}
LOG_FILE = "mmseg.log"  # what mmengine and mmseg print while a point runs


def protocol_name(settings: SegmentSettings) -> str:
    """The benchmark a run belongs to, e.g. `segment-voc-linear-frozen`, `segment-voc-aug-fcn-finetune`."""
    regime = "frozen" if settings.frozen else "finetune"
    return f"segment-{settings.dataset}-{settings.protocol}-{regime}"


def plan(settings: SegmentSettings, weights: WeightsRef) -> list[SweepPoint]:
    """Check every input (nothing trained or written; notes such as a shrunk crop go to stderr): one point
    per learning rate, the checked SegmentPlan as each point's task."""
    checked = check_settings(settings, weights)
    for note in checked.notes:
        print(f"segment: {note}", file=sys.stderr)
    shared = {
        "frozen": settings.frozen,
        "iters": checked.iters,
        "batch_size": checked.batch_size,
        "crop_size": checked.crop_size,
        "resize_scale": checked.resize_scale,
        "classes": len(checked.class_names),
        "train_images": checked.train_images,
        "val_images": checked.val_images,
        "processes": settings.processes,
        "seed": settings.seed,
        "cfg_options": list(settings.cfg_options),
    }
    protocol = protocol_name(settings)
    dataset = f"{settings.dataset}:{checked.data_root}"
    points = [
        SweepPoint(point_name("", lr=lr), protocol, {"lr": lr, **shared}, weights, dataset, checked)
        for lr in checked.lrs
    ]
    check_points(points)
    return points


def _header(point: SweepPoint) -> str:
    settings = point.task.settings
    regime = "frozen" if settings.frozen else "fine-tuned"
    return (
        f"Written by `vicregl segment`: {point.protocol}, {regime} {point.weights.backbone}"
        f" ({point.weights.label}), {settings.dataset}, lr {point.params['lr']:g}.\n"
        "Trains with mmsegmentation's tools/train.py; needs the vicregl package importable (custom_imports)."
    )


def export_state(weights: WeightsRef) -> dict[str, Tensor]:
    """The backbone tensors to export (bare keys), from memory: the checked model's complete state (BN
    counters a file may omit included); random init seeded."""
    return complete_state(weights)


def export_point(point: SweepPoint, state: dict[str, Tensor], reuse: Path | None = None) -> Path:
    """Write point.folder/config.py and backbone.pth (`state`, or a hard link to `reuse`), then build the
    model as mmseg does and check that its backbone holds exactly `state`. Returns config.py."""
    # mmseg's registries (mmseg_models loads mmseg, heavy and optional): only once a point is exported
    from vicregl_cli.transfer.mmseg_models import check_exported_config

    plan: SegmentPlan = point.task
    weights_path = export_prefixed(point.folder / WEIGHTS_FILE, state, reuse=reuse)
    text = config_text(build_config(plan, point.weights, point.params["lr"]), _header(point))
    config_path = write_text_atomic(point.folder / CONFIG_FILE, text)
    check_exported_config(config_path, state, str(weights_path))
    return config_path


def export_points(points: list[SweepPoint], out_dir: Path) -> list[Path]:
    """--export-only: config.py + backbone.pth per point in out_dir/<point name>, the weights written once
    and hard-linked (or copied) for the other points. Returns the config paths."""
    state = export_state(points[0].weights)
    configs: list[Path] = []
    for point in points:
        placed = dataclasses.replace(point, folder=Path(out_dir) / point.name)
        reuse = configs[0].parent / WEIGHTS_FILE if configs else None
        configs.append(export_point(placed, state, reuse))
    return configs


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


def _launcher() -> str:
    """'pytorch' under torchrun / SLURM with several processes, 'none' for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    if slurm_tasks(os.environ) > 1:  # a multi-task allocation without srun stops here (UserError)
        return "slurm"
    return "none"


def train_and_evaluate(config_path: Path, work_dir: Path) -> tuple[dict[str, float], nn.Module]:
    """Train an exported config with mmengine's Runner (resuming a started run in work_dir), evaluate on the
    validation split at the end; returns (metrics of the last validation, trained model)."""
    from mmengine.config import Config  # mmengine's Runner stack (heavy, optional): only when a point trains
    from mmengine.runner import Runner

    from vicregl_cli.transfer.mmseg_models import ProgressHook

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


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    """Send what mmengine / mmseg print (their logger's console lines, `print` calls, Python warnings) to
    `log_path`, not the terminal; vicregl's own progress display writes to stderr and stays visible."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        yield


def run_point(point: SweepPoint) -> dict[str, float]:
    """Export, train and evaluate one learning rate in point.folder: mIoU, aAcc, mAcc (percent); the
    per-class IoU goes to point.folder/per_class_iou.json, mmengine's output to point.folder/mmseg.log."""
    with output_to(point.folder / LOG_FILE):
        config_path = export_point(point, export_state(point.weights))
        metrics, _ = train_and_evaluate(config_path, point.folder)
    per_class = {
        name.removeprefix("IoU."): round(float(value), 2)
        for name, value in metrics.items()
        if name.startswith("IoU.")
    }
    if is_main_process():
        write_json_atomic(point.folder / PER_CLASS_FILE, per_class)
    return {name: round(float(metrics[name]), 2) for name in SUMMARY_METRICS if name in metrics}
