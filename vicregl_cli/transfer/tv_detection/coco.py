"""COCO 2017 instances for the torchvision engine's Mask R-CNN: train2017 (all, or the shared 10 % subset)
-> val2017, read with pycocotools; masks stay COCO segmentations (polygons / RLE) until an image is loaded."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from vicregl_cli.errors import UserError
from vicregl_cli.transfer.coco_subset import coco_subset_ids
from vicregl_cli.transfer.tv_detection.data import DetectionData, Sample

COCO_DATASETS = ("coco", "coco-10pct")
SPLIT_FOLDERS = {"train": "train2017", "test": "val2017"}


def annotation_file(root: Path, folder: str) -> Path:
    return Path(root) / "annotations" / f"instances_{folder}.json"


def check_coco_root(root: Path) -> Path:
    """A COCO 2017 root: annotations/instances_{train,val}2017.json and the train2017/, val2017/ folders."""
    root = Path(root).expanduser()
    wanted = [annotation_file(root, folder) for folder in SPLIT_FOLDERS.values()]
    wanted += [root / folder for folder in SPLIT_FOLDERS.values()]
    missing = [str(path.relative_to(root)) for path in wanted if not path.exists()]
    if missing:
        raise UserError(f"{root} is not a COCO 2017 root: it lacks {', '.join(missing)}")
    return root


def read_coco(json_file: Path) -> COCO:
    """pycocotools' index of one annotation file (its progress prints kept off stdout)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_file))


def _samples(coco: COCO, image_ids: list[int], image_folder: Path, label_of: dict[int, int]) -> list[Sample]:
    """One Sample per image: crowd regions and empty boxes left out (as detectron2's mapper does)."""
    samples = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        objects = [
            ann for ann in coco.imgToAnns.get(image_id, [])
            if not ann.get("iscrowd", 0) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0
        ]  # fmt: skip
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)], np.float64)
        samples.append(
            Sample(
                image_id=str(image_id),
                image_path=image_folder / info["file_name"],
                width=int(info["width"]),
                height=int(info["height"]),
                boxes=boxes.reshape(-1, 4),
                labels=np.array([label_of[ann["category_id"]] for ann in objects], dtype=np.int64),
                difficult=np.zeros(len(objects), dtype=bool),
                segmentations=[ann["segmentation"] for ann in objects],
            )
        )
    return samples


def load_coco_data(dataset: str, root: Path) -> DetectionData:
    """`coco`: train2017 -> val2017; `coco-10pct`: `coco_subset_ids` of train2017 (the detectron2 launcher's
    subset) -> val2017. Training images without objects are dropped after the subset is drawn."""
    root = check_coco_root(root)
    train_coco = read_coco(annotation_file(root, SPLIT_FOLDERS["train"]))
    test_file = annotation_file(root, SPLIT_FOLDERS["test"])
    test_coco = read_coco(test_file)
    category_ids = sorted(train_coco.cats)
    if sorted(test_coco.cats) != category_ids:
        raise UserError(f"{root}: train2017 and val2017 annotation files list different categories")
    label_of = {category: label for label, category in enumerate(category_ids)}
    train_ids = sorted(train_coco.imgs)
    if dataset == "coco-10pct":
        train_ids = coco_subset_ids(train_ids)
    train = _samples(train_coco, train_ids, root / SPLIT_FOLDERS["train"], label_of)
    train = [sample for sample in train if len(sample.labels)]
    if not train:
        raise UserError(f"no training image of {root} has an object")
    test = _samples(test_coco, sorted(test_coco.imgs), root / SPLIT_FOLDERS["test"], label_of)
    missing = [sample.image_path for sample in train + test if not sample.image_path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) named by the annotations do not exist, e.g. {missing[0]}")
    return DetectionData(
        train=train,
        test=test,
        class_names=[train_coco.cats[category]["name"] for category in category_ids],
        category_ids=tuple(category_ids),
        annotations=test_file,
    )
