"""`vicregl detect` in the protocol shape (DESIGN §6): Faster R-CNN C4 on VOC (fine-tuned, or `--frozen`:
Linear Det.), Mask R-CNN R50-FPN on COCO, trained on detectron2 (the exported `.pkl` + config, run by the
launcher) or the embedded torchvision engine. One point per learning rate; the engine is a param, so runs
of one benchmark on either engine line up in `report`."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from vicregl_cli.backbones.registry import get_spec
from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.data.readers import VOC_CLASSES, voc_class_names
from vicregl_cli.errors import UserError
from vicregl_cli.sweep import SweepPoint, point_name
from vicregl_cli.transfer import detectron2_run, tv_detection
from vicregl_cli.transfer.detectron2_config import (
    DATASET_PROTOCOL,
    resnet_geometry,
    solver,
)
from vicregl_cli.transfer.detectron2_export import ExportResult, write_detectron2_files
from vicregl_cli.transfer.tv_detection import DetectionSettings
from vicregl_cli.transfer.tv_detection.coco import COCO_DATASETS, check_coco_root

METRIC = "AP"  # VOC: the VOC07 11-point AP over IoU 0.50:0.95; COCO: COCOeval's box AP
RESUMES = True  # both engines resume a run from its folder: the sweep requeues its SLURM jobs
ENGINES = ("detectron2", "torchvision")
BENCHMARKS = {
    "voc": "detect-voc-faster-rcnn-c4",
    "voc0712": "detect-voc0712-faster-rcnn-c4",
    "coco": "detect-coco-mask-rcnn-fpn",
    "coco-10pct": "detect-coco-10pct-mask-rcnn-fpn",
}
FROZEN_SUFFIX = "-frozen"  # --frozen (Table 9's Linear Det.): detect-voc0712-faster-rcnn-c4-frozen


@dataclass(frozen=True)
class DetectConfig:
    """Everything `vicregl detect` needs besides the weights. `settings` holds the torchvision engine's other
    hyper-parameters; its batch_size, iters, base_lr and device come from the fields here."""

    dataset: str  # voc (one VOC folder: train -> val), voc0712, coco, coco-10pct
    data_root: Path
    engine: str | None = None  # None: detectron2 when importable, else torchvision
    lrs: tuple[float, ...] | None = None  # None: 0.02 x batch_size / 16
    iters: int | None = None  # None: the benchmark's schedule (24k VOC, 90k COCO)
    batch_size: int = 16
    num_gpus: int | None = None  # detectron2: GPUs per machine for the launcher; None: the GPUs visible
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    device: str | None = None  # torchvision engine: None / auto, cuda or cpu
    frozen: bool = False  # Linear Det.: backbone and res5 head frozen, RPN and box predictor trained

    @property
    def benchmark(self) -> str:
        """The protocol name of the record: the dataset's benchmark, `-frozen` for Linear Det."""
        return BENCHMARKS[self.dataset] + (FROZEN_SUFFIX if self.frozen else "")


def visible_gpus() -> int:
    """The GPUs this process sees (at least 1: detectron2's launcher then runs one process)."""
    import torch

    return max(1, torch.cuda.device_count())


def _check_options(config: DetectConfig, weights: WeightsRef, engine: str) -> None:
    """The dataset name, the numbers, and a backbone the engine takes (detectron2: one it knows)."""
    if config.dataset not in BENCHMARKS:
        raise UserError(f"unknown detection dataset {config.dataset!r}; choose one of {sorted(BENCHMARKS)}")
    if config.batch_size < 1 or (config.num_gpus or 1) < 1 or (config.iters is not None and config.iters < 1):
        raise UserError("--batch-size, --num-gpus and --iters must be at least 1")
    if config.lrs and any(lr <= 0 for lr in config.lrs):
        raise UserError(f"--lr needs positive learning rates, got {list(config.lrs)}")
    spec = get_spec(weights.backbone)
    if spec.family != "resnet":
        raise UserError(
            f"backbone {weights.backbone!r} is a {spec.family}, not a ResNet; the Faster / Mask R-CNN "
            "benchmarks need one (res4 trunk + res5 head)"
        )
    if spec.output_stride != 32:
        raise UserError(
            f"backbone {weights.backbone!r} has the small-input stem (3 x 3 stride-1 convolution, no "
            "max-pool: output stride 8); the C4 / FPN detectors assume ImageNet's stem (res4 at stride 16, "
            "detectron2's 7 x 7 `stem.conv1`): use a backbone without `_small`"
        )
    if config.frozen and config.dataset in COCO_DATASETS:
        raise UserError("--frozen is VICRegL Table 9's Linear Det. (Faster R-CNN C4, VOC); drop it for COCO")
    if engine == "detectron2":
        resnet_geometry(weights.backbone)


def _check_data_root(dataset: str, root: Path) -> None:
    """VOC: the layout and every annotation (unknown class names fail); COCO: its 2017 files and folders."""
    if dataset in COCO_DATASETS:
        check_coco_root(root)
    else:
        tv_detection.load_data(dataset, root)


def _class_names(dataset: str, data_root: Path) -> list[str] | None:
    """The detector's classes: `classes.txt` (else VOC's 20) for voc, VOC's 20 for voc0712, None for COCO."""
    if dataset == "voc":
        return voc_class_names(data_root)
    return list(VOC_CLASSES) if dataset == "voc0712" else None


def _engine(config: DetectConfig) -> str:
    """The engine asked for, checked; None: detectron2 when importable, else torchvision (said in a line)."""
    if config.engine is None:
        if detectron2_run.detectron2_importable():
            return "detectron2"
        print("detect: detectron2 is not installed; running the embedded torchvision engine", file=sys.stderr)
        return "torchvision"
    if config.engine not in ENGINES:
        raise UserError(f"--engine {config.engine!r}: choose detectron2 or torchvision")
    if config.engine == "detectron2" and not detectron2_run.detectron2_importable():
        raise UserError(
            "--engine detectron2: detectron2 is not installed (use --export-only here and train on the "
            "cluster, or --engine torchvision)"
        )
    return config.engine


def _tv_settings(config: DetectConfig, lr: float) -> DetectionSettings:
    """The torchvision engine's settings of one point of a planned (resolved) config (COCO: the 1x
    schedule's steps and warm-up)."""
    settings = replace(
        config.settings,
        batch_size=config.batch_size,
        iters=config.iters,
        base_lr=lr,
        device=config.device or "auto",
        frozen=config.frozen,
    )
    return settings.coco_schedule() if config.dataset in COCO_DATASETS else settings


def _detectron2_params(config: DetectConfig, protocol: str, lr: float) -> dict:
    """A detectron2 point's params: the config it runs, lr, iterations, batch, lr steps, warm-up, GPUs."""
    schedule = solver(protocol, config.batch_size, lr, config.iters)
    return {
        "config": protocol,
        "lr": lr,
        "iters": config.iters,
        "batch_size": config.batch_size,
        "steps": schedule["STEPS"],
        "warmup": schedule["WARMUP_ITERS"],
        "num_gpus": config.num_gpus,
        "frozen": config.frozen,
    }


def plan(config: DetectConfig, weights: WeightsRef) -> list[SweepPoint]:
    """Check everything, train nothing: the engine, dataset, options and backbone, the data root's layout and
    (VOC) every annotation's class. One point per learning rate, params with the resolved schedule."""
    engine = _engine(config)
    _check_options(config, weights, engine)
    root = Path(config.data_root).expanduser().resolve()
    protocol = DATASET_PROTOCOL[config.dataset]
    iters = config.iters or solver(protocol)["MAX_ITER"]
    lrs = tuple(config.lrs or (0.02 * config.batch_size / 16,))
    num_gpus = config.num_gpus
    if engine == "detectron2" and num_gpus is None:
        num_gpus = visible_gpus()
    if engine == "torchvision" and (num_gpus or 1) > 1:
        raise UserError(f"the torchvision engine trains on one GPU, not {num_gpus} (--num-gpus / "
                        "--gpus-per-node 1), or --engine detectron2 for several")  # fmt: skip
    task = replace(config, data_root=root, engine=engine, lrs=lrs, iters=iters, num_gpus=num_gpus)
    if engine == "torchvision":
        geometry = tv_detection.check_data(config.dataset, root, _tv_settings(task, lrs[0]))
        runs = [tv_detection.recorded_params(_tv_settings(task, lr), geometry) for lr in lrs]
    else:
        _check_data_root(config.dataset, root)
        runs = [_detectron2_params(task, protocol, lr) for lr in lrs]
    source = f"{config.dataset}:{root}"
    return [
        SweepPoint(point_name("", lr=lr), task.benchmark, {"engine": engine, **params}, weights, source, task)
        for lr, params in zip(lrs, runs, strict=True)
    ]  # fmt: skip


def _write_detectron2(
    config: DetectConfig, weights: WeightsRef, folder: Path, lr: float | None, name: str, output_dir: Path
) -> ExportResult:
    """`folder/backbone.pkl` (from the weights in memory) and the benchmark config naming it (`--frozen`: with
    Linear Det.'s freeze settings)."""
    return write_detectron2_files(
        weights, folder, config_name=name, output_dir=output_dir, dataset=config.dataset,
        data_root=config.data_root, class_names=_class_names(config.dataset, Path(config.data_root)),
        batch_size=config.batch_size, base_lr=lr, iters=config.iters, frozen=config.frozen,
    )  # fmt: skip


def run_point(point: SweepPoint) -> dict[str, float]:
    """Train and evaluate one learning rate on the planned engine -> its (finite) metrics: the torchvision
    engine here (checkpoint and resume in the run folder; VOC: its test detections in the devkit's results
    files under `RUN/detections/`), or the detectron2 launcher on the point's own `.pkl` + config in its run
    folder (`--resume`: a requeued job continues from detectron2's last checkpoint there)."""
    config: DetectConfig = point.task
    lr = point.params["lr"]
    if config.engine == "torchvision":
        settings = _tv_settings(config, lr)
        metrics = tv_detection.run(point.weights, config.dataset, config.data_root, settings, point.folder)
    else:
        written = _write_detectron2(config, point.weights, point.folder, lr, "config.yaml", point.folder)
        metrics = detectron2_run.train(written.config, config.num_gpus or visible_gpus(), point.folder)
    return {name: value for name, value in metrics.items() if math.isfinite(value)}


def export(config: DetectConfig, weights: WeightsRef, out: Path) -> ExportResult:
    """`--export-only`: check as `plan` does for detectron2 (which need not be installed here), then write
    `out/backbone.pkl` and `out/<protocol>.yaml` (OUTPUT_DIR out/detectron2) for the launcher."""
    if config.lrs and len(config.lrs) > 1:
        raise UserError("--export-only writes one config: give at most one --lr")
    _check_options(config, weights, "detectron2")
    root = Path(config.data_root).expanduser().resolve()
    _check_data_root(config.dataset, root)
    out = Path(out)
    name = f"{DATASET_PROTOCOL[config.dataset]}{'_frozen' if config.frozen else ''}.yaml"
    lr = config.lrs[0] if config.lrs else None
    return _write_detectron2(replace(config, data_root=root), weights, out, lr, name, out / "detectron2")
