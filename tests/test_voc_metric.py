"""Detection metrics: voc_eval on hand-made predictions against an independent VOC devkit evaluator written
here (the `voc_eval` of py-faster-rcnn that detectron2's PascalVOCDetectionEvaluator runs on the devkit's
results files), and a two-iteration torchvision run whose comp4 files, re-scored, give its own numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from vicregl_cli.backbones.weights import resolve_weights
from vicregl_cli.sweep import run_protocol
from vicregl_cli.transfer import detect
from vicregl_cli.transfer import tv_detection as tv
from vicregl_cli.transfer.detect import DetectConfig
from vicregl_cli.transfer.voc_eval import (
    ImageDetections,
    ImageTruth,
    coco_metrics,
    read_voc_results,
    voc_detection_metrics,
    voc_metrics,
    write_voc_results,
)

# ---------------------------------------------------------------- the devkit's definition, written here

Annotations = dict[str, list[tuple[str, list[int], bool]]]  # image id -> [(class, 1-based box, difficult)]


def devkit_ap(lines: list[str], annotations: Annotations, name: str, threshold: float) -> float | None:
    """One class's VOC07 AP from its results-file lines: detections in descending score order; each takes
    the ground-truth box of its image it overlaps most, IoU in 1-based inclusive pixels (width = xmax - xmin
    + 1); above `threshold` a difficult box ignores it, an unmatched box makes it a TP, a matched one an FP;
    at or below it is an FP. AP: the mean over recall 0, 0.1, ... 1 of the best precision at recall >= t. None
    without positives (detectron2 would divide by zero; voc_eval leaves such classes out)."""
    truth = {
        image: (
            np.array([box for cls, box, _ in objects if cls == name], dtype=float).reshape(-1, 4),
            np.array([hard for cls, _, hard in objects if cls == name], dtype=bool),
        )
        for image, objects in annotations.items()
    }
    positives = sum(int((~hard).sum()) for _, hard in truth.values())
    if positives == 0:
        return None
    taken = {image: np.zeros(len(hard), dtype=bool) for image, (_, hard) in truth.items()}
    rows = [line.split() for line in lines]
    scores = np.array([float(row[1]) for row in rows])
    hits = []
    for index in np.argsort(-scores):  # voc_eval.py: sorted_ind = np.argsort(-confidence)
        image, box = rows[index][0], np.array([float(value) for value in rows[index][2:]])
        boxes, hard = truth[image]
        best, overlap = -1, -np.inf
        if len(boxes):
            width = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
            height = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
            inter = width * height
            areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
            ious = inter / ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0) + areas - inter)
            best, overlap = int(np.argmax(ious)), float(np.max(ious))
        if overlap <= threshold:
            hits.append(False)
        elif not hard[best]:
            hits.append(not taken[image][best])
            taken[image][best] = True
    true_pos = np.cumsum(hits, dtype=float)
    recall = true_pos / positives
    precision = true_pos / np.arange(1, len(hits) + 1)
    # detectron2's thresholds, np.arange(0, 1.1, 0.1): recall is tested against 0.30000000000000004, not 0.3
    return sum(float(np.max(precision[recall >= t], initial=0.0)) for t in np.arange(0.0, 1.1, 0.1)) / 11


def devkit_metrics(folder: Path, annotations: Annotations, class_names: list[str]) -> dict[str, float]:
    """AP (mean over IoU 0.50:0.05:0.95), AP50, AP75 in percent from the comp4 files in `folder`."""
    lines = {name: (folder / f"comp4_det_test_{name}.txt").read_text().splitlines() for name in class_names}
    means = {}
    for step in range(10):
        threshold = 0.5 + 0.05 * step
        aps = [devkit_ap(lines[name], annotations, name, threshold) for name in class_names]
        means[step] = 100.0 * float(np.mean([ap for ap in aps if ap is not None]))
    return {"AP": float(np.mean(list(means.values()))), "AP50": means[0], "AP75": means[5]}


def ours(annotations: Annotations, detections: dict[str, list], class_names: list[str]):
    """The same data for voc_eval: pixel edges (1-based xmin, ymin minus 1), 0-based labels."""
    ids = list(annotations)

    def edges(box):
        return [box[0] - 1, box[1] - 1, box[2], box[3]]

    truths = [
        ImageTruth(
            np.array([edges(box) for _, box, _ in annotations[i]], dtype=float).reshape(-1, 4),
            np.array([class_names.index(cls) for cls, _, _ in annotations[i]], dtype=np.int64),
            np.array([hard for _, _, hard in annotations[i]], dtype=bool),
        )
        for i in ids
    ]
    dets = [
        ImageDetections(
            np.array([edges(box) for _, box, _ in detections.get(i, [])], dtype=float).reshape(-1, 4),
            np.array([score for _, _, score in detections.get(i, [])], dtype=float),
            np.array([class_names.index(cls) for cls, _, _ in detections.get(i, [])], dtype=np.int64),
        )
        for i in ids
    ]
    return ids, truths, dets


# ---------------------------------------------------------------- voc_eval on hand-made values


def _box(x: float, y: float, size: float = 10.0) -> list[float]:
    return [x, y, x + size, y + size]


def _truth(boxes, labels, difficult=None) -> ImageTruth:
    difficult = [False] * len(labels) if difficult is None else difficult
    return ImageTruth(np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels), np.array(difficult))


def _dets(boxes, scores, labels) -> ImageDetections:
    return ImageDetections(
        np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores), np.array(labels)
    )


def test_perfect_predictions_score_100():
    truths = [_truth([_box(0, 0), _box(30, 30)], [0, 1]), _truth([_box(5, 40)], [1])]
    dets = [_dets([_box(0, 0), _box(30, 30)], [0.9, 0.8], [0, 1]), _dets([_box(5, 40)], [0.7], [1])]
    assert voc_metrics(dets, truths, 2) == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    assert coco_metrics(dets, truths) == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})


def test_false_positive_between_true_positives_known_values():
    # class 0: two objects; ranked TP (0.9), FP (0.8), TP (0.7): recall .5 .5 1, precision 1 .5 2/3.
    truths = [_truth([_box(0, 0)], [0]), _truth([_box(20, 20)], [0])]
    dets = [_dets([_box(0, 0), _box(40, 40)], [0.9, 0.8], [0, 0]), _dets([_box(20, 20)], [0.7], [0])]
    eleven_point = (6 * 1.0 + 5 * 2 / 3) / 11  # recall thresholds 0..0.5 reach precision 1, 0.6..1 reach 2/3
    all_point = 0.5 * 1.0 + 0.5 * 2 / 3
    coco_101 = (51 * 1.0 + 50 * 2 / 3) / 101
    assert voc_metrics(dets, truths, 1)["AP50"] == pytest.approx(100 * eleven_point)
    assert voc_metrics(dets, truths, 1, use_07_metric=False)["AP50"] == pytest.approx(100 * all_point)
    assert coco_metrics(dets, truths)["AP"] == pytest.approx(100 * coco_101, abs=1e-4)


def test_difficult_objects_are_neither_true_nor_false_positives():
    truths = [_truth([_box(0, 0), _box(30, 30)], [0, 0], [False, True])]
    found_difficult = [_dets([_box(30, 30), _box(0, 0)], [0.95, 0.9], [0, 0])]
    missed_difficult = [_dets([_box(0, 0)], [0.9], [0])]
    for dets in (found_difficult, missed_difficult):
        assert voc_metrics(dets, truths, 1)["AP50"] == pytest.approx(100.0)
        assert coco_metrics(dets, truths)["AP50"] == pytest.approx(100.0)
    duplicate = [_dets([_box(0, 0), _box(0, 0)], [0.9, 0.8], [0, 0])]  # second hit on a matched object: FP
    assert voc_metrics(duplicate, truths, 1)["AP50"] == pytest.approx(100.0)  # FP after full recall
    early_duplicate = [_dets([_box(0, 0), _box(0, 0), _box(30, 30)], [0.9, 0.8, 0.7], [0, 0, 0])]
    assert voc_metrics(early_duplicate, truths, 1)["AP50"] == pytest.approx(100.0)


def test_voc_headline_keys_are_voc07_and_coco_style_numbers_sit_beside():
    # class 0: TP (0.9, exact), FP (0.8, no object), TP (0.7, IoU 0.68 with its object). At IoU 0.50-0.65 that
    # is TP FP TP (recall .5 .5 1, precision 1 .5 2/3); at 0.70-0.95 TP FP FP (recall stays 0.5).
    truths = [_truth([_box(0, 0)], [0]), _truth([_box(20, 20)], [0])]
    dets = [_dets([_box(0, 0), _box(40, 40)], [0.9, 0.8], [0, 0]), _dets([[20, 20, 30, 26.8]], [0.7], [0])]
    voc07_low, voc07_high = (6 * 1.0 + 5 * 2 / 3) / 11, 6 / 11  # 11-point: recall >= 0 .. 0.5 reach 1
    coco_low, coco_high = (51 * 1.0 + 50 * 2 / 3) / 101, 51 / 101
    expected = {
        "AP": 100 * (4 * voc07_low + 6 * voc07_high) / 10, "AP50": 100 * voc07_low, "AP75": 100 * voc07_high,
        "coco_AP": 100 * (4 * coco_low + 6 * coco_high) / 10, "coco_AP50": 100 * coco_low,
        "coco_AP75": 100 * coco_high,
    }  # fmt: skip
    assert voc_detection_metrics(dets, truths, 1) == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------- voc_eval against the devkit

CLASSES = ["cat", "dog", "bird", "person"]
HAND_TRUTH: Annotations = {
    "000001": [("cat", [1, 1, 50, 50], False), ("dog", [60, 60, 100, 100], True)],
    "000002": [("cat", [10, 10, 40, 60], False), ("dog", [5, 5, 30, 30], False)],
    "000003": [],
    "000004": [("bird", [1, 1, 20, 20], False), ("bird", [30, 30, 60, 60], False),
               ("person", [5, 5, 80, 90], False)],
    "000005": [("cat", [20, 20, 70, 70], False), ("bird", [100, 100, 140, 130], True)],
}  # fmt: skip
HAND_DETECTIONS = {  # (class, 1-based box, score); IoU with the object in the comment
    "000001": [("cat", [1, 1, 50, 50], 0.95),  # 1: TP
               ("cat", [5, 3, 52, 50], 0.9),  # 0.85 with the matched cat: FP at every threshold
               ("dog", [60, 60, 100, 100], 0.8),  # on a difficult dog: ignored
               ("dog", [150, 150, 180, 180], 0.3)],  # nothing: FP
    "000002": [("cat", [12, 10, 40, 62], 0.7),  # 0.902: TP up to 0.90
               ("dog", [5, 5, 17, 30], 0.85),  # exactly 0.5: FP (the devkit needs IoU > threshold)
               ("dog", [6, 5, 30, 31], 0.4)],  # 0.927: TP up to 0.90
    "000003": [("cat", [10, 10, 40, 40], 0.6)],  # an image without objects: FP
    "000004": [("bird", [2, 2, 20, 21], 0.5)],  # 0.862; the other bird and the person are missed
    "000005": [("cat", [20, 20, 52, 70], 0.65),  # 0.647: TP at 0.5, FP at 0.75
               ("bird", [100, 100, 140, 130], 0.99), ("bird", [101, 100, 140, 130], 0.2)],  # difficult twice
}  # fmt: skip


def _random_set(seed: int, tied_scores: bool = False) -> tuple[Annotations, dict[str, list]]:
    """40 images of 5 classes: integer 1-based objects (15 % difficult); detections = jittered copies in half
    pixels (some duplicated, some with the wrong class) + stray boxes; distinct 3-decimal scores, or with
    `tied_scores` only 5 score values (many ties, ranked by the devkit's unstable sort)."""
    rng = np.random.default_rng(seed)
    names = [*CLASSES, "car"]
    annotations, detections = {}, {}
    values = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=999) if tied_scores else np.arange(1, 1000) / 1000
    scores = iter(rng.permutation(values))
    for image in range(40):
        image_id = f"{image:06d}"
        objects = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(1, 150, size=2)
            w, h = rng.integers(5, 80, size=2)
            box = [int(x), int(y), int(x + w), int(y + h)]
            objects.append((names[rng.integers(5)], box, bool(rng.random() < 0.15)))
        annotations[image_id] = objects
        dets = []
        for cls, box, _ in objects:
            for _ in range(1 + (rng.random() < 0.3)):
                if rng.random() < 0.8:
                    jitter = rng.integers(-16, 17, size=4) / 2
                    moved = [box[0] + jitter[0], box[1] + jitter[1], box[2] + jitter[2], box[3] + jitter[3]]
                    moved[2], moved[3] = max(moved[2], moved[0] + 1), max(moved[3], moved[1] + 1)
                    label = names[rng.integers(5)] if rng.random() < 0.1 else cls
                    dets.append((label, moved, float(next(scores))))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.integers(1, 200, size=2) / 2
            dets.append((names[rng.integers(5)], [x, y, x + 20.5, y + 30.0], float(next(scores))))
        detections[image_id] = dets
    return annotations, detections


@pytest.mark.parametrize("case", ["hand-made", "random", "random-tied"])
def test_voc_eval_equals_the_devkit_definition(tmp_path, case):
    if case == "hand-made":
        annotations, detections, names = HAND_TRUTH, HAND_DETECTIONS, CLASSES
    else:
        (annotations, detections), names = _random_set(0, case == "random-tied"), [*CLASSES, "car"]
    ids, truths, dets = ours(annotations, detections, names)
    expected = voc_metrics(dets, truths, len(names))
    write_voc_results(tmp_path, ids, dets, names)
    assert devkit_metrics(tmp_path, annotations, names) == pytest.approx(expected, abs=1e-6, rel=0)
    assert 0.0 < expected["AP"] < expected["AP50"] < 100.0 and expected["AP75"] < expected["AP50"]


def test_the_hand_made_case_has_the_values_worked_out_by_hand():
    # IoU 0.5, in score order. cat (3 objects): TP, FP (duplicate), TP, TP, FP -> recall 1/3 1/3 2/3 1 1,
    # precision 1 1/2 2/3 3/4 3/5: 11-point 1 at recall >= 0 .. 0.3, 3/4 at 0.4 .. 1. dog (1 object; the
    # difficult one ignored): FP (IoU exactly 0.5), TP, FP -> 1/2 everywhere. bird (2 objects; 2 detections on
    # the difficult one ignored): TP -> recall 1/2 at precision 1. person: missed, 0.
    _, truths, dets = ours(HAND_TRUTH, HAND_DETECTIONS, CLASSES)
    cat, dog, bird = (4 * 1.0 + 7 * 0.75) / 11, 0.5, 6 / 11
    assert voc_metrics(dets, truths, 4)["AP50"] == pytest.approx(100 * (cat + dog + bird + 0.0) / 4)


def test_comp4_files_are_the_devkit_format_and_read_back_exactly(tmp_path):
    ids, _, dets = ours(HAND_TRUTH, HAND_DETECTIONS, CLASSES)
    paths = write_voc_results(tmp_path, ids, dets, CLASSES)
    assert [path.name for path in paths] == [f"comp4_det_test_{name}.txt" for name in CLASSES]
    assert (tmp_path / "comp4_det_test_person.txt").read_text() == ""  # a class without detections: empty
    assert (tmp_path / "comp4_det_test_cat.txt").read_text().splitlines()[:2] == [
        "000001 0.950 1.0 1.0 50.0 50.0", "000001 0.900 5.0 3.0 52.0 50.0"]  # fmt: skip
    for written, read in zip(dets, read_voc_results(tmp_path, ids, CLASSES), strict=True):
        order = np.argsort(written.labels, kind="stable")  # class by class, each in the image's order
        np.testing.assert_array_equal(read.boxes, written.boxes[order])
        np.testing.assert_array_equal(read.scores, written.scores[order])
        np.testing.assert_array_equal(read.labels, written.labels[order])
    with pytest.raises(ValueError, match="unique"):
        write_voc_results(tmp_path, ["a", "a"], dets[:2], CLASSES)


# ---------------------------------------------------------------- the torchvision engine's comp4 files


TAGS = ("xmin", "ymin", "xmax", "ymax")


def _read_annotations(voc: Path, split: str) -> Annotations:
    """The split's objects as the devkit reads them: integer 1-based boxes, the difficult flag."""
    annotations = {}
    for image_id in (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        root = ElementTree.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        annotations[image_id] = [
            (obj.findtext("name"), [int(obj.findtext(f"bndbox/{tag}")) for tag in TAGS],
             obj.findtext("difficult") == "1")
            for obj in root.iter("object")
        ]  # fmt: skip
    return annotations


def test_torchvision_engine_writes_comp4_files_that_rescore_to_its_metrics(tmp_path, synthetic_voc):
    settings = tv.DetectionSettings(
        workers=0, precise_bn_iters=1, rois_per_image=8, rpn_batch_per_image=16,
        proposals_train=20, proposals_test=10, log_every=1,
    )  # fmt: skip
    config = DetectConfig(dataset="voc", data_root=synthetic_voc, engine="torchvision", lrs=(0.01,), iters=2,
                          batch_size=2, settings=settings)  # fmt: skip
    torch.set_num_threads(1)
    records = run_protocol(detect, config, resolve_weights("random", "resnet18"), tmp_path / "sweep")
    record = json.loads((tmp_path / "sweep" / "lr=0.01" / "result.json").read_text())
    assert records[0]["metrics"] == record["metrics"]
    assert set(record["metrics"]) == {"AP", "AP50", "AP75", "coco_AP", "coco_AP50", "coco_AP75"}
    assert all(0.0 <= value <= 100.0 for value in record["metrics"].values())
    assert record["params"]["lr"] == 0.01 and record["params"]["iters"] == 2
    assert record["params"]["engine"] == "torchvision" and record["protocol"] == "detect-voc-faster-rcnn-c4"
    assert record["backbone"] == "resnet18" and record["weights"]["path"] == "random"

    names = (synthetic_voc / "classes.txt").read_text().split()
    folder = tmp_path / "sweep" / "lr=0.01" / "detections"
    assert sorted(path.name for path in folder.iterdir()) == sorted(f"comp4_det_test_{n}.txt" for n in names)
    annotations = _read_annotations(synthetic_voc, "val")
    line = re.compile(r"(\S+) (\d\.\d{3}) (-?\d+\.\d) (-?\d+\.\d) (-?\d+\.\d) (-?\d+\.\d)")
    files = [folder / f"comp4_det_test_{name}.txt" for name in names]
    lines = [text for path in files for text in path.read_text().splitlines()]
    assert lines, "a random-init detector still returns boxes above the 0.05 score threshold"
    for text in lines:
        match = line.fullmatch(text)
        assert match and match[1] in annotations, text
        x0, y0, x1, y1 = (float(value) for value in match.groups()[2:])
        assert 1.0 <= x0 <= x1 <= 65.0 and 1.0 <= y0 <= y1 <= 65.0, text  # inside the 64 px image, 1-based
    rescored = devkit_metrics(folder, annotations, names)
    assert rescored == pytest.approx({key: record["metrics"][key] for key in rescored}, abs=1e-6, rel=0)
