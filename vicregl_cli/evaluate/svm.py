"""`vicregl svm`: VOC07 classification transfer (VICReg B.3) — frozen pooled features of the devkit's train
split (trainval) and test split, one linear SVM per class with its cost chosen by cross-validation (svm_fit),
mAP on the test split. One sweep point; the per-class detail goes to `per_class.json` beside result.json."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.data.voc_classification import (
    VOCClassificationSplit,
    read_classification_split,
    split_images,
)
from vicregl_cli.distributed import compute_device, is_main_process, world_size
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.features import (
    bn_batches_used,
    bn_recalibration_params,
    eval_transform,
    extractor_from_config,
    warn_if_small_images,
)
from vicregl_cli.evaluate.svm_fit import (
    VISSL_COSTS,
    VISSL_FOLDS,
    VISSL_MAX_ITER,
    SvmFit,
    check_trainable,
    evaluate_svms,
    fit_svms,
    normalise,
)
from vicregl_cli.files import write_json_atomic
from vicregl_cli.sweep import SweepPoint

METRIC = "mAP"
DETAIL_FILE = "per_class.json"


@dataclass(frozen=True)
class SvmConfig:
    """Everything `vicregl svm` needs besides the weights; the run's params record each field but paths."""

    data: Path
    train_split: str = "trainval"
    test_split: str = "test"
    costs: tuple[float, ...] = VISSL_COSTS
    folds: int = VISSL_FOLDS
    max_iter: int = VISSL_MAX_ITER
    jobs: int = -1
    seed: int = 0
    image_size: int = 224
    resize: int = 256
    batch_size: int = 256
    num_workers: int = 8
    cache_dir: Path | None = None
    recalibrate_bn: bool | None = None
    bn_batches: int = 100
    device: str | None = None


def check_options(config: SvmConfig) -> None:
    """Option errors that need no data."""
    if (
        not config.costs
        or any(cost <= 0 for cost in config.costs)
        or len(set(config.costs)) != len(config.costs)
    ):
        raise UserError(f"--cost needs distinct positive costs, got {list(config.costs)}")
    if config.folds < 2:
        raise UserError(f"--folds must be at least 2, got {config.folds}")
    if config.max_iter < 1 or config.batch_size < 1:
        raise UserError("--max-iter and --batch-size must be at least 1")
    if config.jobs == 0:
        raise UserError("--jobs must be a number of processes (>= 1) or -1 for every core")
    eval_transform(config.resize, config.image_size)


def read_splits(config: SvmConfig) -> tuple[VOCClassificationSplit, VOCClassificationSplit]:
    """Both splits' labels, checked: same classes, enough positives to cross-validate and to score."""
    train = read_classification_split(config.data, config.train_split)
    test = read_classification_split(config.data, config.test_split)
    check_trainable(train.labels, train.classes, config.folds)
    unscorable = [name for name, count in zip(test.classes, test.counts(1), strict=True) if count == 0]
    if unscorable:
        raise UserError(
            f"{len(unscorable)} class(es) have no positive image in split {config.test_split!r}, so no AP: "
            f"{', '.join(unscorable[:10])}"
        )
    return train, test


def plan(config: SvmConfig, weights: WeightsRef) -> list[SweepPoint]:
    """Check options, label files and images (nothing computed): one point."""
    check_options(config)
    train, test = read_splits(config)
    warn_if_small_images("svm", train.paths, config.image_size, config.resize)
    bn_batches = bn_batches_used(weights, config.recalibrate_bn, config.bn_batches)
    params = {
        "train_split": config.train_split, "test_split": config.test_split, "costs": list(config.costs),
        "folds": config.folds, "max_iter": config.max_iter, "seed": config.seed,
        "image_size": config.image_size, "resize": config.resize, "batch_size": config.batch_size,
        "recalibrate_bn": bool(bn_batches),
        "bn_recalibration": bn_recalibration_params(bn_batches, config.batch_size, weights.seed),
        "classes": len(train.classes), "train_images": len(train.ids), "test_images": len(test.ids),
        "train_difficult": int((train.labels == 0).sum()), "test_difficult": int((test.labels == 0).sum()),
    }  # fmt: skip
    dataset = f"voc-cls:{train.root.resolve()}:{config.train_split}->{config.test_split}"
    return [SweepPoint("svm", "svm", params, weights, dataset, config)]


def _share(metrics: dict[str, float] | None) -> dict[str, float]:
    """Rank 0's metrics on every rank (the SVMs are fitted once, on rank 0)."""
    if world_size() == 1:
        return metrics
    holder = [metrics]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def run_point(point: SweepPoint) -> dict[str, float]:
    """Extract (or read cached) features of both splits, fit the per-class SVMs on rank 0, score the test
    split: mAP (VOC07 11-point, percent), mAP_all_points (VISSL's AP), cv_mAP (the chosen costs' fold AP)."""
    config: SvmConfig = point.task
    train, test = read_splits(config)
    transform = eval_transform(config.resize, config.image_size)
    train_images, test_images = split_images(train, transform), split_images(test, transform)
    extractor = extractor_from_config(config, point.weights, compute_device(config.device), train_images)
    train_features, _ = extractor.features(train_images, f"{config.train_split} features")
    test_features, _ = extractor.features(test_images, f"{config.test_split} features")
    if not is_main_process():
        return _share(None)
    fit = fit_svms(
        normalise(train_features.numpy()), train.labels, config.costs,
        folds=config.folds, max_iter=config.max_iter, seed=config.seed, jobs=config.jobs,
    )  # fmt: skip
    scores = evaluate_svms(fit, normalise(test_features.numpy()), test.labels)
    stopped = int(fit.stopped_at_max_iter.sum())
    if stopped:
        total = len(train.classes) * (len(config.costs) * config.folds + 1)
        print(
            f"svm: {stopped} of {total} LIBLINEAR fits stopped at --max-iter {config.max_iter}",
            file=sys.stderr,
        )
    if point.folder is not None:
        write_json_atomic(point.folder / DETAIL_FILE, per_class_detail(fit, scores, train, test))
    metrics = {
        "mAP": 100.0 * float(scores["ap"].mean()),
        "mAP_all_points": 100.0 * float(scores["ap_all_points"].mean()),
        "cv_mAP": 100.0 * float(fit.cv_ap.max(axis=1).mean()),
    }
    return _share(metrics)


def per_class_detail(
    fit: SvmFit, scores: dict[str, np.ndarray], train: VOCClassificationSplit, test: VOCClassificationSplit
) -> dict:
    """Per class: test AP (both definitions, percent), chosen cost, fold AP per cost, image counts."""
    return {
        "costs": list(fit.costs),
        "classes": {
            name: {
                "AP": 100.0 * float(scores["ap"][index]),
                "AP_all_points": 100.0 * float(scores["ap_all_points"][index]),
                "cost": float(fit.chosen_costs[index]),
                "cv_ap": [float(value) for value in fit.cv_ap[index]],
                "train_positives": int(train.counts(1)[index]),
                "test_positives": int(test.counts(1)[index]),
                "test_difficult": int(test.counts(0)[index]),
                "fits_stopped_at_max_iter": int(fit.stopped_at_max_iter[index]),
            }
            for index, name in enumerate(train.classes)
        },
    }
