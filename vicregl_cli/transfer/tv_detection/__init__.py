"""The embedded torchvision Faster R-CNN C4 detection engine, so `vicregl detect` runs without detectron2."""

from vicregl_cli.transfer.tv_detection.data import TORCHVISION_DATASETS, check_voc_root, load_data
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
