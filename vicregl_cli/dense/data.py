"""(image, mask) pairs at the dense protocols' input size: the reference's square resize for evaluation, and
its augmented view (random resized crop at scale 0.5-2, colour jitter) for the memory, seeded per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.data.readers import load_rgb, read_mask

IGNORE = 255
CROP_SCALE = (0.5, 2.0)  # open-hummingbird-eval's RandomResizedCrop of the memory images
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.1  # brightness, contrast, saturation and hue ranges, each applied with probability 0.5
JITTER_PROBABILITY = 0.5


def _jitter(image: Image.Image) -> Image.Image:
    """The reference's colour jitter: four independent ColorJitter steps, each with probability 0.5."""
    steps = (
        transforms.ColorJitter(brightness=JITTER),
        transforms.ColorJitter(contrast=JITTER),
        transforms.ColorJitter(saturation=JITTER),
        transforms.ColorJitter(hue=JITTER),
    )
    for step in steps:
        if torch.rand(()) < JITTER_PROBABILITY:
            image = step(image)
    return image


class PairedImages(Dataset):
    """Items (normalised image (3, S, S), mask (S, S) int64, 255 = ignore). `augment_seed` None: the square
    resize; else a random resized crop + colour jitter drawn from (augment_seed, index) — the same view on
    every run. `reduce_zero_label` (ADE20k): label 0 is ignored and the others shift down by one."""

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        size: int,
        augment_seed: int | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        self.pairs = pairs
        self.size = size
        self.augment_seed = augment_seed
        self.reduce_zero_label = reduce_zero_label
        self.normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.pairs)

    def _views(self, image: Image.Image, mask: Image.Image, index: int) -> tuple[Image.Image, Image.Image]:
        size = [self.size, self.size]
        if self.augment_seed is None:
            return (
                F.resize(image, size, InterpolationMode.BILINEAR, antialias=True),
                F.resize(mask, size, InterpolationMode.NEAREST),
            )
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.augment_seed * 1_000_003 + index)  # CPU only: cheap
            top, left, height, width = transforms.RandomResizedCrop.get_params(image, CROP_SCALE, CROP_RATIO)
            image = F.resized_crop(image, top, left, height, width, size, InterpolationMode.BILINEAR,
                                   antialias=True)  # fmt: skip
            mask = F.resized_crop(mask, top, left, height, width, size, InterpolationMode.NEAREST)
            return _jitter(image), mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = self._views(load_rgb(image_path), Image.fromarray(read_mask(mask_path)), index)
        labels = torch.from_numpy(np.array(mask, dtype=np.int64))
        if self.reduce_zero_label:
            labels = torch.where((labels == 0) | (labels == IGNORE), IGNORE, labels - 1)
        return self.normalize(F.to_tensor(image)), labels
