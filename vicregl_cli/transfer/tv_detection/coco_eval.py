"""COCO evaluation of the Mask R-CNN on val2017 with pycocotools' COCOeval: detections as COCO results
(xywh boxes, masks thresholded at 0.5 and RLE-encoded), box and mask AP under the keys of docs/detect.md."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch import nn

from vicregl_cli.progress import track
from vicregl_cli.transfer.tv_detection.coco import read_coco
from vicregl_cli.transfer.tv_detection.data import DetectionData, DetectionImages

# COCOeval.stats index -> key: box keys as COCOeval names them, mask keys with an `m` (VICRegL Table 10's APm)
BOX_KEYS = {0: "AP", 1: "AP50", 2: "AP75", 3: "AP_small", 4: "AP_medium", 5: "AP_large"}
MASK_KEYS = {0: "APm", 1: "APm50", 2: "APm75", 3: "APm_small", 4: "APm_medium", 5: "APm_large"}


def coco_results(image_id: int, output: dict, category_ids: tuple[int, ...]) -> list[dict]:
    """One image's detections as COCO results: [x, y, w, h] boxes, category ids, scores and (with masks)
    the RLE of each mask probability map > 0.5, as detectron2's instances_to_coco_json writes them."""
    boxes = output["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = output["scores"].detach().cpu().numpy().astype(np.float64)
    labels = output["labels"].detach().cpu().numpy()
    masks = output.get("masks")
    binary = None if masks is None else (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
    results = []
    for index, ((x0, y0, x1, y1), score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
        result = {
            "image_id": image_id,
            "category_id": category_ids[int(label) - 1],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if binary is not None:
            rle = mask_utils.encode(np.asfortranarray(binary[index]))
            result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        results.append(result)
    return results


def coco_metrics(annotations: Path, results: list[dict], with_masks: bool) -> dict[str, float]:
    """COCOeval's box (and mask) AP, AP50, AP75 and size splits in percent; a size split without ground
    truth (COCOeval's -1) is left out. No detection at all scores 0. COCOeval's table goes to stderr."""
    truth = read_coco(annotations)
    tasks = [("bbox", BOX_KEYS)] + ([("segm", MASK_KEYS)] if with_masks else [])
    if not results:
        return {keys[index]: 0.0 for _, keys in tasks for index in range(3)}
    metrics = {}
    with contextlib.redirect_stdout(sys.stderr):
        detections = truth.loadRes(results)
        for iou_type, keys in tasks:
            evaluator = COCOeval(truth, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            found = {key: float(evaluator.stats[index]) for index, key in keys.items()}
            metrics.update({key: 100.0 * value for key, value in found.items() if value >= 0})
    return metrics


@torch.no_grad()
def evaluate_coco(
    model: nn.Module, data: DetectionData, test_size: int, device: torch.device
) -> dict[str, float]:
    """Detect (and segment) every val2017 image at `test_size`, one at a time, then score with COCOeval."""
    train_sizes = model.transform.min_size
    model.transform.min_size = (test_size,)
    model.eval()
    images = DetectionImages(data.test)
    results: list[dict] = []
    with track("detect eval", len(data.test), log_every=max(1, len(data.test) // 5)) as tracker:
        for index, sample in enumerate(data.test):
            image, _ = images[(index, False)]
            output = model([image.to(device)])[0]
            results += coco_results(int(sample.image_id), output, data.category_ids)
            tracker.advance()
    model.transform.min_size = train_sizes
    return coco_metrics(data.annotations, results, with_masks=data.has_masks)
