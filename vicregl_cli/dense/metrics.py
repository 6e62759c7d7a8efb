"""mIoU as open-hummingbird-eval's PredsmIoU computes it: a (ground truth × predicted) confusion matrix over
the valid pixels, predicted classes mapped to ground-truth classes (Hungarian on IoU, majority many-to-one,
or identity), IoU per ground-truth class, averaged over every class."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vicregl_cli.dense.data import IGNORE


def confusion(truth: Tensor, predicted: Tensor, num_truth: int, num_predicted: int) -> Tensor:
    """(num_truth, num_predicted) int64 pixel counts, pixels labelled 255 left out."""
    valid = truth != IGNORE
    pairs = truth[valid].long() * num_predicted + predicted[valid].long()
    counts = torch.bincount(pairs.cpu(), minlength=num_truth * num_predicted)
    return counts.view(num_truth, num_predicted)


def iou_matrix(counts: Tensor) -> np.ndarray:
    """IoU of every (truth class, predicted class) pair: TP / (row + column − TP)."""
    matrix = counts.double().numpy()
    union = matrix.sum(axis=1, keepdims=True) + matrix.sum(axis=0, keepdims=True) - matrix
    return matrix / np.maximum(union, 1e-8)


def hungarian_mapping(counts: Tensor) -> np.ndarray:
    """Predicted class -> truth class by the Hungarian method on IoU; unmatched predictions map to class 0
    (the reference's convention)."""
    rows, columns = linear_sum_assignment(1.0 - iou_matrix(counts))
    mapping = np.zeros(counts.shape[1], dtype=np.int64)
    mapping[columns] = rows
    return mapping


def majority_mapping(counts: Tensor) -> np.ndarray:
    """Predicted class -> the truth class holding most of its pixels (many-to-one, for overclustering)."""
    return counts.argmax(dim=0).numpy()


def class_iou(counts: Tensor, mapping: np.ndarray | None) -> np.ndarray:
    """IoU per truth class after folding the predicted classes by `mapping` (None: prediction i is class i);
    a class with no pixel in truth or prediction scores 0, as in the reference."""
    matrix = counts.double().numpy()
    num_truth, num_predicted = matrix.shape
    if mapping is None:
        mapping = np.arange(num_predicted)
    columns = mapping < num_truth  # identity: predictions past the last class hit no class
    folded = np.zeros((num_truth, num_truth))
    np.add.at(folded.T, mapping[columns], matrix[:, columns].T)
    true_positive = np.diag(folded)
    false_positive = folded.sum(axis=0) - true_positive
    false_negative = matrix.sum(axis=1) - true_positive
    return true_positive / np.maximum(true_positive + false_positive + false_negative, 1e-8)


def miou_metrics(counts: Tensor, class_names: list[str], prefix: str = "") -> tuple[dict, dict]:
    """({prefix}mIoU (Hungarian) and {prefix}mIoU_identity in percent, per-class IoU per mapping) of a
    square confusion."""
    matched = class_iou(counts, hungarian_mapping(counts))
    identity = class_iou(counts, None)
    metrics = {f"{prefix}mIoU": 100 * matched.mean(), f"{prefix}mIoU_identity": 100 * identity.mean()}
    per_class = {
        "hungarian": dict(zip(class_names, (100 * matched).tolist(), strict=True)),
        "identity": dict(zip(class_names, (100 * identity).tolist(), strict=True)),
    }
    return metrics, per_class
