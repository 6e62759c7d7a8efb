"""VISSL's VOC07 SVM benchmark (Goyal et al. 2019) on feature matrices: one scikit-learn LinearSVC (LIBLINEAR)
per class and cost, cost chosen per class by k-fold cross-validated average precision on the training set,
then scored on the test set with the VOC07 11-point AP (and VISSL's all-point AP).

Facts from VISSL (`vissl/utils/svm_utils/svm_trainer.py` and the ResNet VOC07 SVM config
`configs/config/benchmark/linear_image_classification/voc07/eval_resnet_8gpu_transfer_voc07_svm.yaml`):
features divided by (L2 norm + 1e-5); costs 0.01 … 1000; 3 folds (`cross_val_score(cv=3)`: unshuffled
stratified folds); squared hinge, L2 penalty, dual, tol 1e-4, max_iter 2000, class weights {1: 2, -1: 1};
difficult images (devkit 0) are negatives in training and left out of the test AP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.svm import LinearSVC

from vicregl_cli.errors import UserError
from vicregl_cli.protocol_defaults import VISSL_COSTS, VISSL_FOLDS, VISSL_MAX_ITER
from vicregl_cli.voc_ap import voc_ap

CLASS_WEIGHT = {1: 2.0, -1: 1.0}
NORM_EPSILON = 1e-5


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm + 1e-5, in float64 (LIBLINEAR's precision), as VISSL's `normalize`."""
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + NORM_EPSILON)


def training_targets(devkit_labels: np.ndarray) -> np.ndarray:
    """SVM targets of one class: 1 present, -1 otherwise (difficult-only images are negatives, as VISSL)."""
    return np.where(np.asarray(devkit_labels) == 1, 1, -1)


def make_svm(cost: float, max_iter: int = VISSL_MAX_ITER, seed: int = 0) -> LinearSVC:
    """VISSL's per-class classifier; `random_state` seeds LIBLINEAR's dual coordinate order (VISSL leaves it
    to numpy's global state, so its runs are not repeatable bit for bit)."""
    return LinearSVC(
        C=cost, class_weight=CLASS_WEIGHT, intercept_scaling=1.0, penalty="l2", loss="squared_hinge",
        dual=True, tol=1e-4, max_iter=max_iter, random_state=seed,
    )  # fmt: skip


def cross_validated_ap(
    features: np.ndarray, targets: np.ndarray, cost: float, folds: int, max_iter: int, seed: int
) -> tuple[float, int]:
    """(mean average precision over unshuffled stratified folds, scikit-learn's AP on decision values; how
    many fold fits stopped at max_iter)."""
    with warnings.catch_warnings():  # counted below instead (a task runs alone in its worker process)
        warnings.simplefilter("ignore", ConvergenceWarning)
        outcome = cross_validate(
            make_svm(cost, max_iter, seed), features, targets, cv=StratifiedKFold(folds),
            scoring="average_precision", return_estimator=True,
        )  # fmt: skip
    stopped = sum(int(svm.n_iter_ >= max_iter) for svm in outcome["estimator"])
    return float(outcome["test_score"].mean()), stopped


def _fit(features: np.ndarray, targets: np.ndarray, cost: float, max_iter: int, seed: int) -> LinearSVC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return make_svm(cost, max_iter, seed).fit(features, targets)


@dataclass(frozen=True)
class SvmFit:
    """The per-class SVMs: cross-validated AP (classes × costs), chosen cost, the chosen SVMs' weights, and
    per class how many of its fits stopped at max_iter (LIBLINEAR's ConvergenceWarning, counted not shown)."""

    costs: tuple[float, ...]
    cv_ap: np.ndarray
    chosen_costs: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    stopped_at_max_iter: np.ndarray

    def decision(self, features: np.ndarray) -> np.ndarray:
        """Decision values (N, classes) of normalised features."""
        return features @ self.coef.T + self.intercept


def check_trainable(devkit_labels: np.ndarray, classes: list[str], folds: int) -> None:
    """Every class needs at least `folds` positives and `folds` negatives (stratified folds)."""
    positives = (devkit_labels == 1).sum(axis=0)
    negatives = devkit_labels.shape[0] - positives
    short = [name for name, p, n in zip(classes, positives, negatives, strict=True) if min(p, n) < folds]
    if short:
        raise UserError(
            f"{len(short)} class(es) have fewer than {folds} positive or negative training images, too few "
            f"for {folds}-fold cross-validation: {', '.join(short[:10])}"
        )


def fit_svms(
    features: np.ndarray,
    devkit_labels: np.ndarray,
    costs: tuple[float, ...] = VISSL_COSTS,
    *,
    folds: int = VISSL_FOLDS,
    max_iter: int = VISSL_MAX_ITER,
    seed: int = 0,
    jobs: int = -1,
) -> SvmFit:
    """Cross-validate every (class, cost), keep the first cost of the best mean fold AP per class (np.argmax,
    as VISSL), and fit that class's SVM on all the training features. `features` must be normalised.

    Every (class, cost) is one task on joblib's process pool (loky; the features are memory-mapped, not
    copied). Not threads: LIBLINEAR's random generator is one global state per process, so concurrent fits
    in threads draw from each other's sequence and stop being reproducible. Only the chosen cost is refitted
    on the full set (VISSL refits every cost)."""
    targets = [training_targets(devkit_labels[:, index]) for index in range(devkit_labels.shape[1])]
    pool = Parallel(n_jobs=jobs)
    folds_out = pool(
        delayed(cross_validated_ap)(features, target, cost, folds, max_iter, seed)
        for target in targets
        for cost in costs
    )
    cv_ap = np.array([ap for ap, _ in folds_out], dtype=np.float64).reshape(len(targets), len(costs))
    chosen = np.asarray(costs, dtype=np.float64)[np.argmax(cv_ap, axis=1)]
    svms = pool(
        delayed(_fit)(features, target, cost, max_iter, seed)
        for target, cost in zip(targets, chosen, strict=True)
    )
    stopped = np.array([stop for _, stop in folds_out]).reshape(len(targets), len(costs)).sum(axis=1)
    stopped += np.array([int(svm.n_iter_ >= max_iter) for svm in svms])
    coef = np.stack([svm.coef_[0] for svm in svms])
    intercept = np.array([svm.intercept_[0] for svm in svms])
    return SvmFit(tuple(costs), cv_ap, chosen, coef, intercept, stopped)


def classification_ap(devkit_labels: np.ndarray, scores: np.ndarray, use_07_metric: bool = True) -> float:
    """AP of one class as the VOC devkit scores classification: images ranked by score, difficult ones (0)
    neither true nor false positives; VOC07 11-point, or the all-point area (VISSL's `calculate_ap`)."""
    devkit_labels = np.asarray(devkit_labels)
    kept = devkit_labels != 0
    order = np.argsort(-np.asarray(scores)[kept], kind="stable")
    present = devkit_labels[kept][order] == 1
    if not present.any():
        raise UserError("a class has no positive test image: its AP is undefined")
    true_positives = np.cumsum(present)
    false_positives = np.cumsum(~present)
    recall = true_positives / present.sum()
    precision = true_positives / (true_positives + false_positives)
    return voc_ap(recall, precision, use_07_metric)


def evaluate_svms(fit: SvmFit, features: np.ndarray, devkit_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class test AP of the chosen SVMs on normalised features: VOC07 11-point and all-point."""
    scores = fit.decision(features)
    columns = range(devkit_labels.shape[1])
    return {
        "ap": np.array([classification_ap(devkit_labels[:, c], scores[:, c], True) for c in columns]),
        "ap_all_points": np.array(
            [classification_ap(devkit_labels[:, c], scores[:, c], False) for c in columns]
        ),
    }
