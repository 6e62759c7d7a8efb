"""Detection metrics: Pascal VOC AP as detectron2's VOC evaluator computes it (VOC07 11-point or all-point,
per IoU threshold, difficult objects neither true nor false positives) and COCO AP (pycocotools backend).
On VOC datasets the headline AP, AP50, AP75 are the VOC07 ones (DESIGN §3), the COCO-style ones `coco_*`.

Boxes are xyxy pixel edges (VOC's 1-based xmin/ymin minus 1): in these coordinates the VOC devkit's "+1" IoU
equals the plain continuous IoU, so no pixel offsets are applied here. Detections go to and come back
from the VOC devkit's results files (`comp4_det_test_<class>.txt`) in the devkit's 1-based coordinates, as
detectron2 writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vicregl_cli.voc_ap import voc_ap

VOC_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RESULTS_FILE = "comp4_det_test_{}.txt"  # the devkit's results file of one class (competition 4: any data)


@dataclass
class ImageDetections:
    """Predictions for one image: boxes (N, 4) xyxy, scores (N,), labels (N,) 0-based class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ImageTruth:
    """Ground truth for one image: boxes (M, 4) xyxy, labels (M,) 0-based, difficult (M,) bool."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes` (M, 4)."""
    width = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0.0, None)
    height = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0.0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.finfo(np.float64).eps)


def class_ap(
    detections: list[ImageDetections], truths: list[ImageTruth], label: int, iou: float, use_07_metric: bool
) -> float | None:
    """AP of one class at one IoU threshold; None when the class has no non-difficult ground truth.

    Detections in descending score order each take the ground truth they overlap most; above `iou` that is a
    true positive if still unmatched, a false positive if already matched, and ignored if it is difficult."""
    gt_boxes = [truth.boxes[truth.labels == label].astype(np.float64) for truth in truths]
    gt_difficult = [truth.difficult[truth.labels == label] for truth in truths]
    num_positives = int(sum((~difficult).sum() for difficult in gt_difficult))
    if num_positives == 0:
        return None
    image_index, scores, boxes = [], [], []
    for index, image in enumerate(detections):
        keep = image.labels == label
        image_index.extend([index] * int(keep.sum()))
        scores.append(image.scores[keep])
        boxes.append(image.boxes[keep])
    scores_all = np.concatenate(scores) if scores else np.zeros(0)
    boxes_all = np.concatenate(boxes).astype(np.float64).reshape(-1, 4) if boxes else np.zeros((0, 4))
    order = np.argsort(-scores_all)  # the devkit's sort (not stable): equal 3-decimal scores rank alike
    matched = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    true_pos, false_pos = np.zeros(len(order)), np.zeros(len(order))
    for rank, det in enumerate(order):
        image = image_index[det]
        candidates = gt_boxes[image]
        if len(candidates) == 0:
            false_pos[rank] = 1.0
            continue
        overlaps = box_iou(boxes_all[det], candidates)
        best = int(np.argmax(overlaps))
        if overlaps[best] <= iou:
            false_pos[rank] = 1.0
        elif gt_difficult[image][best]:
            continue
        elif matched[image][best]:
            false_pos[rank] = 1.0
        else:
            true_pos[rank] = 1.0
            matched[image][best] = True
    true_pos, false_pos = np.cumsum(true_pos), np.cumsum(false_pos)
    recall = true_pos / num_positives
    precision = true_pos / np.maximum(true_pos + false_pos, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric)


def voc_metrics(
    detections: list[ImageDetections], truths: list[ImageTruth], num_classes: int, use_07_metric: bool = True
) -> dict[str, float]:
    """detectron2's PascalVOCDetectionEvaluator numbers, in percent: AP (mean over IoU 0.50:0.05:0.95), AP50,
    AP75, each the mean over the classes that have non-difficult ground truth."""
    per_threshold = {}
    for iou in VOC_IOU_THRESHOLDS:
        aps = [class_ap(detections, truths, label, iou, use_07_metric) for label in range(num_classes)]
        present = [ap for ap in aps if ap is not None]
        per_threshold[iou] = 100.0 * float(np.mean(present)) if present else 0.0
    return {
        "AP": float(np.mean(list(per_threshold.values()))),
        "AP50": per_threshold[0.5],
        "AP75": per_threshold[0.75],
    }


def coco_metrics(detections: list[ImageDetections], truths: list[ImageTruth]) -> dict[str, float]:
    """COCO AP, AP50, AP75 in percent (pycocotools through torchmetrics); difficult objects are crowd regions,
    which COCO ignores the way VOC ignores difficult ones (detections on them count as neither TP nor FP)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    predictions = [
        {
            "boxes": torch.as_tensor(image.boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.as_tensor(image.scores, dtype=torch.float32),
            "labels": torch.as_tensor(image.labels, dtype=torch.int64),
        }
        for image in detections
    ]
    targets = [
        {
            "boxes": torch.as_tensor(truth.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(truth.labels, dtype=torch.int64),
            "iscrowd": torch.as_tensor(truth.difficult, dtype=torch.int64),
        }
        for truth in truths
    ]
    metric.update(predictions, targets)
    result = metric.compute()
    return {
        name: 100.0 * max(float(result[key]), 0.0)
        for name, key in (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"))
    }


def voc_detection_metrics(
    detections: list[ImageDetections], truths: list[ImageTruth], num_classes: int
) -> dict[str, float]:
    """What a VOC detection run records: AP, AP50, AP75 of detectron2's VOC07 evaluator (the papers'
    figures) and the COCO-style numbers beside them as coco_AP, coco_AP50, coco_AP75."""
    metrics = voc_metrics(detections, truths, num_classes, use_07_metric=True)
    metrics.update({f"coco_{name}": value for name, value in coco_metrics(detections, truths).items()})
    return metrics


def write_voc_results(
    folder: Path, image_ids: list[str], detections: list[ImageDetections], class_names: list[str]
) -> list[Path]:
    """One devkit results file per class in `folder` (empty when the class has no detection): a line per
    detection, `image_id score xmin ymin xmax ymax`, score with 3 decimals, the box in the devkit's 1-based
    pixel coordinates with 1 decimal (detectron2's PascalVOCDetectionEvaluator format)."""
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique to name detections in VOC results files")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in class_names]
    for image_id, image in zip(image_ids, detections, strict=True):
        for (x0, y0, x1, y1), score, label in zip(image.boxes, image.scores, image.labels, strict=True):
            lines[int(label)].append(f"{image_id} {score:.3f} {x0 + 1:.1f} {y0 + 1:.1f} {x1:.1f} {y1:.1f}\n")
    paths = [folder / RESULTS_FILE.format(name) for name in class_names]
    for path, class_lines in zip(paths, lines, strict=True):
        path.write_text("".join(class_lines))
    return paths


def read_voc_results(folder: Path, image_ids: list[str], class_names: list[str]) -> list[ImageDetections]:
    """The detections of `write_voc_results`' files, per image of `image_ids`, boxes back in pixel edges."""
    index_of = {image_id: index for index, image_id in enumerate(image_ids)}
    rows: list[list[tuple[list[float], float, int]]] = [[] for _ in image_ids]
    for label, name in enumerate(class_names):
        for line in (Path(folder) / RESULTS_FILE.format(name)).read_text().splitlines():
            image_id, score, x0, y0, x1, y1 = line.split()
            box = [float(x0) - 1.0, float(y0) - 1.0, float(x1), float(y1)]
            rows[index_of[image_id]].append((box, float(score), label))
    return [
        ImageDetections(
            np.array([box for box, _, _ in image], dtype=np.float64).reshape(-1, 4),
            np.array([score for _, score, _ in image], dtype=np.float64),
            np.array([label for _, _, label in image], dtype=np.int64),
        )
        for image in rows
    ]
