"""`vicregl svm` fitting speed at VOC07 scale: 5,000 × 2,048 features, 20 classes, VISSL's 11 costs × 3 folds.

    .venv/bin/python benchmarks/svm.py                       # ours on all classes + the baseline on 2 classes
    .venv/bin/python benchmarks/svm.py --baseline-classes 20 # the baseline on every class (slow: ~4x ours)

Ours: `fit_svms` (every (class, cost) cross-validation a task on a joblib process pool, only the chosen cost
refitted) + `evaluate_svms`. Baseline: VISSL's `SVMTrainer.train_cls` loop written out again, one class after
another in one process (cross_val_score + a full fit for every cost; VISSL itself runs one thread per class,
which shares LIBLINEAR's global random state between threads). The baseline runs on `--baseline-classes`
classes and its per-class time is scaled to all classes (said so in the output); it is checked to choose the
same costs as ours on those classes. Features: non-negative class-clustered random vectors (pooled ReLU
features are non-negative), about 8 % positives per class, like VOC07 trainval."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vicregl_cli.evaluate.svm_fit import (  # noqa: E402
    VISSL_COSTS,
    evaluate_svms,
    fit_svms,
    make_svm,
    normalise,
    training_targets,
)


def make_problem(samples: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, devkit labels) with ~8 % positives per class and 2 % difficult entries."""
    generator = np.random.default_rng(seed)
    present = generator.random((samples, classes)) < 0.08
    centres = generator.normal(size=(classes, dim)) * 0.25
    features = np.abs(generator.normal(size=(samples, dim)) + present @ centres).astype(np.float32)
    labels = np.where(present, 1, -1).astype(np.int8)
    labels[generator.random(labels.shape) < 0.02] = 0
    return features, labels


def baseline_class(features: np.ndarray, devkit_column: np.ndarray, folds: int) -> float:
    """VISSL's per-class loop: per cost, cross_val_score(cv=folds) then a fit on everything; the best cost."""
    targets = training_targets(devkit_column)
    fold_ap = []
    for cost in VISSL_COSTS:
        svm = make_svm(cost)
        fold_ap.append(cross_val_score(svm, features, targets, cv=folds, scoring="average_precision").mean())
        svm.fit(features, targets)
    return VISSL_COSTS[int(np.argmax(fold_ap))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--baseline-classes", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    raw_train, train_labels = make_problem(args.samples, args.dim, args.classes, seed=0)
    raw_test, test_labels = make_problem(args.samples, args.dim, args.classes, seed=1)
    train, test = normalise(raw_train), normalise(raw_test)
    print(f"{args.samples} x {args.dim} features, {args.classes} classes, costs {VISSL_COSTS}, 3 folds, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    started = time.perf_counter()
    fit = fit_svms(train, train_labels, VISSL_COSTS, jobs=args.jobs)
    scores = evaluate_svms(fit, test, test_labels)
    ours = time.perf_counter() - started
    mean_ap = 100 * scores["ap"].mean()
    print(f"ours (jobs {args.jobs}, {args.classes} classes): {ours:7.1f} s, mAP {mean_ap:.2f}, "
          f"fits stopped at max_iter: {int(fit.stopped_at_max_iter.sum())}")  # fmt: skip

    count = min(args.baseline_classes, args.classes)
    started = time.perf_counter()
    chosen = [baseline_class(train, train_labels[:, index], 3) for index in range(count)]
    measured = time.perf_counter() - started
    scaled = measured / count * args.classes
    same = np.array_equal(np.asarray(chosen), fit.chosen_costs[:count])
    print(
        f"VISSL loop, sequential, {count} classes measured: {measured:7.1f} s -> {scaled:7.1f} s for "
        f"{args.classes} classes{' (scaled)' if count < args.classes else ''}; same chosen costs: {same}"
    )
    print(f"ratio ours / baseline: {ours / scaled:.2f}")


if __name__ == "__main__":
    main()
