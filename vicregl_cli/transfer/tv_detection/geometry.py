"""Image sizes and per-image budgets: the paper's values, scaled down for the small synthetic images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vicregl_cli.transfer.tv_detection.data import Sample
from vicregl_cli.transfer.tv_detection.settings import DetectionSettings

PAPER_MIN_SIZES = tuple(range(480, 801, 32))
PAPER_TEST_SIZE = 800
PAPER_MAX_SIZE = 1333
VOC_SHORT_SIDE = 375  # the shorter side of most VOC images (500 x 375)
SMALL_IMAGE_SIDE = 200


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


def resolve_geometry(settings: DetectionSettings, samples: list[Sample]) -> Geometry:
    """Fill the unset sizes and budgets. Real photos get the paper's values (train 480-800 step 32, test 800,
    max 1333; 256 RPN anchors and 512 RoIs sampled per image; 2000 / 1000 proposals kept in training / test).
    Images whose median shorter side is under 200 px (the synthetic set) get the sizes scaled by shorter
    side / 375 (the upsampling VOC's 500 x 375 images get) and the per-image budgets by its square."""
    short = float(np.median([min(sample.width, sample.height) for sample in samples]))
    scale = short / VOC_SHORT_SIDE if short < SMALL_IMAGE_SIDE else 1.0

    def budget(value: int | None, paper: int) -> int:
        return value if value is not None else max(1, round(paper * scale * scale))

    return Geometry(
        min_sizes=tuple(settings.min_sizes or (round(size * scale) for size in PAPER_MIN_SIZES)),
        test_size=settings.test_size or round(PAPER_TEST_SIZE * scale),
        max_size=settings.max_size or round(PAPER_MAX_SIZE * scale),
        rpn_batch_per_image=budget(settings.rpn_batch_per_image, 256),
        rois_per_image=budget(settings.rois_per_image, 512),
        proposals_train=budget(settings.proposals_train, 2000),
        proposals_test=budget(settings.proposals_test, 1000),
        scale=scale,
    )
