"""`vicregl dense` in the protocol shape: `plan(config, weights)` checks the options, the dataset (segment's
readers) and the feature grid without computing anything; `run_point` (dense/run.py) computes one point."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from vicregl_cli import sweep
from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.dense.config import PROTOCOLS, DenseConfig
from vicregl_cli.dense.features import build_options, stage_stride
from vicregl_cli.dense.retrieval import SEARCHES
from vicregl_cli.dense.run import DenseTask, run_point
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.features import bn_batches_used, bn_recalibration_params
from vicregl_cli.options import RunOptions
from vicregl_cli.sweep import SweepPoint, point_name

METRIC = "mIoU"

__all__ = ["METRIC", "DenseConfig", "plan", "run_point", "run_protocol"]


def _check_options(config: DenseConfig) -> None:
    """Choices and numbers that need neither data nor weights."""
    if config.protocol not in PROTOCOLS:
        raise UserError(f"unknown --protocol {config.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if config.search not in SEARCHES:
        raise UserError(f"unknown --search {config.search!r}; choose one of: {', '.join(SEARCHES)}")
    if config.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {config.temperature}")
    positive = {"--k": config.k, "--passes": config.passes, "--input-size": config.input_size,
                "--batch-size": config.batch_size, "--query-chunk": config.query_chunk,
                "--memory-chunk": config.memory_chunk,
                "--kmeans-iterations": config.kmeans_iterations}  # fmt: skip
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if config.num_workers < 0:
        raise UserError(f"--workers must be >= 0, got {config.num_workers}")
    if not config.memory_sizes:
        raise UserError("give at least one --memory-size")
    if any(size is not None and size < 1 for size in config.memory_sizes):
        raise UserError(f"memory sizes must be positive (or all), got {list(config.memory_sizes)}")
    if any(clusters < 2 for clusters in config.clusters):
        raise UserError(f"k-means needs at least 2 clusters, got {list(config.clusters)}")


def _per_image(memory_size: int | None, train_images: int, passes: int, patches: int) -> int | None:
    """Patches each training view keeps: memory_size // (images × passes) (the reference's rule), at most the
    view's patches; None keeps every patch."""
    if memory_size is None:
        return None
    count = memory_size // (train_images * passes)
    if count < 1:
        raise UserError(
            f"--memory-size {memory_size} is smaller than the {train_images} training images × {passes} "
            f"passes: give at least {train_images * passes} (one patch per view) or all"
        )
    return min(count, patches)


def _clusters(config: DenseConfig, num_classes: int, val_patches: int) -> tuple[int, ...]:
    """K = the class count first, then the overclustering Ks capped at the number of validation patches."""
    capped = [min(clusters, val_patches) for clusters in (num_classes, *sorted(config.clusters))]
    return tuple(dict.fromkeys(capped))


def plan(config: DenseConfig, weights: WeightsRef) -> list[SweepPoint]:
    """Check options, dataset layout, classes vs masks and the feature grid (nothing computed): one point per
    memory size for retrieval, one point for k-means (every K from one extraction)."""
    from vicregl_cli.transfer.segment_plan import dataset_files  # segment's readers (mmengine templates)

    _check_options(config)
    build_options(weights.backbone, config.dilate)
    stride = stage_stride(weights.backbone, config.stage, config.dilate)
    if config.input_size % stride:
        raise UserError(
            f"--input-size {config.input_size} is not a multiple of the stage's stride {stride}: try "
            f"{max(stride, config.input_size // stride * stride)}"
        )
    data_root = Path(config.data_root).expanduser()
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} does not exist")
    template, _, train_pairs, val_pairs, class_names = dataset_files(config.dataset, data_root)
    grid = config.input_size // stride
    passes = config.passes if config.augment else 1
    bn_batches = bn_batches_used(weights, config.recalibrate_bn, config.bn_batches)
    common = {
        "input_size": config.input_size, "stage": config.stage, "stride": stride, "grid": grid,
        "dilate": config.dilate, "classes": len(class_names), "train_images": len(train_pairs),
        "val_images": len(val_pairs), "batch_size": config.batch_size, "seed": config.seed,
        "recalibrate_bn": bool(bn_batches),
        "bn_recalibration": bn_recalibration_params(bn_batches, config.batch_size, weights.seed),
    }  # fmt: skip
    task = DenseTask(
        config=dataclasses.replace(config, data_root=data_root.resolve(), passes=passes), stride=stride,
        grid=grid, class_names=tuple(class_names), reduce_zero_label=bool(template["reduce_zero_label"]),
        train_pairs=tuple(train_pairs), val_pairs=tuple(val_pairs), bn_batches=bn_batches,
    )  # fmt: skip
    dataset = f"{config.dataset}:{data_root.resolve()}"
    if config.protocol == "kmeans":
        clusters = _clusters(config, len(class_names), len(val_pairs) * grid**2)
        params = {**common, "clusters": list(clusters), "kmeans_iterations": config.kmeans_iterations,
                  "kmeans": "faiss" if config.search == "faiss" else "scikit-learn"}  # fmt: skip
        task = dataclasses.replace(task, clusters=clusters)
        return [SweepPoint("kmeans", "dense-kmeans", params, weights, dataset, task)]
    points = []
    for memory_size in dict.fromkeys(config.memory_sizes):
        per_image = _per_image(memory_size, len(train_pairs), passes, grid**2)
        kept = (per_image or grid**2) * len(train_pairs) * passes
        params = {**common, "k": config.k, "temperature": config.temperature,
                  "memory_size": memory_size or "all", "memory_entries": kept, "patches_per_view": per_image,
                  "passes": passes, "augment": config.augment, "search": config.search}  # fmt: skip
        name = point_name("retrieval", memory=memory_size or "all")
        points.append(SweepPoint(name, "dense-retrieval", params, weights, dataset,
                                 dataclasses.replace(task, per_image=per_image)))  # fmt: skip
    return points


def run_protocol(
    config: DenseConfig, weights: WeightsRef, out: Path, options: RunOptions | None = None
) -> list[dict]:
    """`vicregl dense` from Python: the sweep's run_protocol on this module (OUT/<point>/result.json,
    OUT/summary.json)."""
    return sweep.run_protocol(sys.modules[__name__], config, weights, Path(out), options)
