"""How large a dataset's images are, read from the headers of a sample of them: the plans of the evaluations
and of segmentation compare it with the size they would feed the backbone, before any compute."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from vicregl_cli.data.readers import UNREADABLE_IMAGE, unreadable_image

SAMPLED_IMAGES = 100  # image headers read per dataset


def median_short_side(paths: Sequence[str | Path]) -> int:
    """The median short side (pixels) of the first SAMPLED_IMAGES images; only their headers are read (one
    that cannot be read is a UserError naming it)."""
    short_sides = []
    for path in paths[:SAMPLED_IMAGES]:
        try:
            with Image.open(path) as image:
                short_sides.append(min(image.size))
        except UNREADABLE_IMAGE as error:
            raise unreadable_image(path, error) from None
    return int(statistics.median(short_sides))


def far_smaller(short_side: int, size: int) -> bool:
    """Images whose short side is under half of `size`: upsampling them 2x and more adds no detail."""
    return short_side * 2 < size


def small_images_note(paths: Sequence[str | Path], image_size: int, resize: int) -> str | None:
    """A one-line warning when the images are far smaller than the evaluation view (short side to `resize`,
    centre crop `image_size`), naming the flags that fit them; None when they fit, or there are none."""
    if not paths:
        return None
    short = median_short_side(paths)
    if not far_smaller(short, image_size):
        return None
    return (
        f"images are about {short} px, far smaller than the {image_size} px view (short side to {resize}): "
        f"upsampled {resize / short:.1f}x their features may score near chance; for images this size give "
        f"--image-size {short} --resize {short}"
    )
