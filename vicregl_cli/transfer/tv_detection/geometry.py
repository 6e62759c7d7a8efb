"""Image sizes and per-image budgets: the benchmark's values, scaled down for the small synthetic images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vicregl_cli.transfer.tv_detection.data import Sample
from vicregl_cli.transfer.tv_detection.settings import DetectionSettings

SMALL_IMAGE_SIDE = 200


@dataclass(frozen=True)
class Reference:
    """A benchmark's sizes and budgets on its real images, whose usual shorter side is `short_side`."""

    min_sizes: tuple[int, ...]
    test_size: int
    max_size: int
    short_side: int
    rpn_batch_per_image: int = 256
    rois_per_image: int = 512
    proposals_train: int = 2000
    proposals_test: int = 1000


# VOC (C4): train 480-800 step 32, test 800; most VOC images are 500 x 375.
VOC_REFERENCE = Reference(tuple(range(480, 801, 32)), 800, 1333, short_side=375)
# COCO (Mask R-CNN FPN 1x): train 640-800 step 32, test 800; most COCO images are 640 x 480; 1000 proposals
# kept per image in training and test (detectron2's FPN POST_NMS_TOPK_TRAIN / _TEST).
COCO_REFERENCE = Reference(tuple(range(640, 801, 32)), 800, 1333, short_side=480, proposals_train=1000)


@dataclass(frozen=True)
class Geometry:
    """Image sizes and per-image budgets after resolving the `None` (auto) settings."""

    min_sizes: tuple[int, ...]
    test_size: int
    max_size: int
    rpn_batch_per_image: int
    rois_per_image: int
    proposals_train: int
    proposals_test: int
    scale: float


def resolve_geometry(
    settings: DetectionSettings, samples: list[Sample], reference: Reference = VOC_REFERENCE
) -> Geometry:
    """Fill the unset sizes and budgets. Real photos get the reference values. Images whose median shorter
    side is under 200 px (the synthetic set) get the sizes scaled by shorter side / the reference's (the
    upsampling the real images get) and the per-image budgets by its square."""
    short = float(np.median([min(sample.width, sample.height) for sample in samples]))
    scale = short / reference.short_side if short < SMALL_IMAGE_SIDE else 1.0

    def budget(value: int | None, paper: int) -> int:
        return value if value is not None else max(1, round(paper * scale * scale))

    return Geometry(
        min_sizes=tuple(settings.min_sizes or (round(size * scale) for size in reference.min_sizes)),
        test_size=settings.test_size or round(reference.test_size * scale),
        max_size=settings.max_size or round(reference.max_size * scale),
        rpn_batch_per_image=budget(settings.rpn_batch_per_image, reference.rpn_batch_per_image),
        rois_per_image=budget(settings.rois_per_image, reference.rois_per_image),
        proposals_train=budget(settings.proposals_train, reference.proposals_train),
        proposals_test=budget(settings.proposals_test, reference.proposals_test),
        scale=scale,
    )
