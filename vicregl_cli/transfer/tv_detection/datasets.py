"""The datasets the torchvision engine reads: VOC layouts (Faster R-CNN C4) and COCO 2017 (Mask R-CNN FPN)."""

from __future__ import annotations

from pathlib import Path

from vicregl_cli.errors import UserError
from vicregl_cli.transfer.tv_detection.coco import COCO_DATASETS, load_coco_data
from vicregl_cli.transfer.tv_detection.data import VOC_DATASETS, DetectionData, load_voc_data

TORCHVISION_DATASETS = VOC_DATASETS + COCO_DATASETS


def load_data(dataset: str, data_root: Path) -> DetectionData:
    """Parse every annotation of the dataset's train and test splits (bad layouts and classes fail here)."""
    if dataset in VOC_DATASETS:
        return load_voc_data(dataset, data_root)
    if dataset in COCO_DATASETS:
        return load_coco_data(dataset, data_root)
    raise UserError(
        f"unknown detection dataset {dataset!r}; the torchvision engine takes {list(TORCHVISION_DATASETS)}"
    )
