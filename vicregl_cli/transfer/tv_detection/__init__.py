"""The embedded torchvision detection engine (Faster R-CNN C4 on VOC, Mask R-CNN FPN on COCO), so that
`vicregl detect` runs without detectron2."""

from vicregl_cli.transfer.tv_detection.data import check_voc_root
from vicregl_cli.transfer.tv_detection.datasets import TORCHVISION_DATASETS, load_data
from vicregl_cli.transfer.tv_detection.engine import check_data, recorded_params, run
from vicregl_cli.transfer.tv_detection.settings import DetectionSettings

__all__ = [
    "TORCHVISION_DATASETS",
    "DetectionSettings",
    "check_data",
    "check_voc_root",
    "load_data",
    "recorded_params",
    "run",
]
