"""Pascal VOC average precision of one ranked list: shared by the VOC07 SVM classification (evaluate/svm) and
the detection metrics (transfer/voc_eval), so both score exactly as the VOC devkit does."""

from __future__ import annotations

import numpy as np


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under the precision/recall curve: VOC07's 11-point mean of the best precision at recall >= t, or
    the all-point area under the precision envelope (VOC 2010+)."""
    if use_07_metric:
        total = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):
            reached = recall >= threshold
            total += (np.max(precision[reached]) if reached.any() else 0.0) / 11.0
        return float(total)
    recalls = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.where(recalls[1:] != recalls[:-1])[0]
    return float(np.sum((recalls[steps + 1] - recalls[steps]) * envelope[steps + 1]))
