"""VICRegL's multi-crop views with the position of every feature-map cell in original-image pixels.

Per crop: a random resized crop (bicubic, antialiased, on uint8) whose box is kept, a horizontal flip, then
the colour recipe of `photometric`, drawn as a row of colour parameters and applied here or, with
`colour_on_device`, shipped with the uint8 crop and applied batched on the training device
(colour_device.py). Positions: the crop box cut into an H × W grid (H = W = crop size //
backbone stride), the centre of each cell as (y, x) — the reference code's (row, column) order — row-major;
a flipped crop lists its columns mirrored, so that position k describes what the feature map shows at cell k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vicregl_cli.data.photometric import NUM_DRAWS, augment_colours_, colour_params
from vicregl_cli.data.shared_batch import stack_shared
from vicregl_cli.errors import UserError

ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_P = 0.5
_CROP_TRIES = 10  # as torchvision's RandomResizedCrop, then the centre crop fallback
_CROP_DRAWS = 2 * _CROP_TRIES + 3  # uniforms per crop: the tries' (area, aspect), top, left, flip
# Alternating within a size group (the reference's two transforms): crops 0, 2, 4... blurred with p 1.0, never
# solarised; crops 1, 3, 5... blurred with p 0.1, solarised with p 0.2. (even, odd) pairs below.
BLUR_P = (1.0, 0.1)
SOLARIZE_P = (0.0, 0.2)


@dataclass(frozen=True)
class MultiCropConfig:
    """Sizes, counts and area-scale ranges of the large and small crops, the backbone stride, flip handling.

    `ignore_flip=True` reproduces the reference code's default: positions as if no crop were flipped.
    """

    large_size: int = 224
    large_count: int = 2
    large_scale: tuple[float, float] = (0.08, 1.0)
    small_size: int = 96
    small_count: int = 0
    small_scale: tuple[float, float] = (0.08, 0.4)
    stride: int = 32
    ignore_flip: bool = False
    blur_p: tuple[float, float] = BLUR_P  # (even crops, odd crops); small-image recipes turn blur off
    solarize_p: tuple[float, float] = SOLARIZE_P

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise UserError(f"backbone stride must be positive, got {self.stride}")
        if self.large_count < 2:
            raise UserError(
                f"{self.large_count} large crop(s): VICRegL pairs the first two (large) views with every "
                "other view, so at least 2 are needed"
            )
        if self.small_count < 0:
            raise UserError(f"small crop count must be ≥ 0, got {self.small_count}")
        groups = [("large", self.large_size, self.large_scale)]
        if self.small_count:
            groups.append(("small", self.small_size, self.small_scale))
        for name, size, scale in groups:
            if size // self.stride < 1:
                raise UserError(
                    f"{name} crop size {size} gives an empty feature grid ({size // self.stride} cells) at "
                    f"backbone stride {self.stride}: use a crop size of at least {self.stride}"
                )
            if size % self.stride:
                raise UserError(
                    f"{name} crop size {size} is not a multiple of the backbone stride {self.stride}, so "
                    f"its feature map size depends on the backbone's padding (ResNets round up, ConvNeXts "
                    f"down); use {size // self.stride * self.stride} or "
                    f"{(size // self.stride + 1) * self.stride}"
                )
            low, high = scale
            if not 0.0 < low <= high <= 1.0:
                raise UserError(f"{name} crop scale must satisfy 0 < min ≤ max ≤ 1, got ({low}, {high})")

    def grid(self, size: int) -> int:
        """Cells per side of the feature map for a crop of `size` pixels."""
        return size // self.stride

    @property
    def num_views(self) -> int:
        return self.large_count + self.small_count


MULTICROP_PRESETS: dict[str, MultiCropConfig] = {
    "resnet": MultiCropConfig(large_size=224, large_count=2, large_scale=(0.08, 1.0), small_count=0),
    "convnext": MultiCropConfig(
        large_size=224,
        large_count=2,
        large_scale=(0.4, 1.0),
        small_size=96,
        small_count=6,
        small_scale=(0.08, 0.4),
    ),
}


class CropBox(NamedTuple):
    """A crop in original-image pixels: rows top..top+height-1, columns left..left+width-1."""

    top: int
    left: int
    height: int
    width: int


class MultiCropSample(NamedTuple):
    """Views (3, S, S), large first, and their positions (H·W, 2) float32 as (y, x). Without `colour` the
    views are normalised float32; with it they are uint8 crops still to be coloured by its rows (V,
    NUM_PARAMS), one per view (colour_device.apply_colours)."""

    views: list[Tensor]
    positions: list[Tensor]
    colour: Tensor | None = None


class Uint8Views(NamedTuple):
    """A batch's uint8 views, each (B, 3, S, S), and their colour parameters (B, V, NUM_PARAMS)."""

    crops: list[Tensor]
    colour: Tensor


class CropGroup(NamedTuple):
    """Same-size crops before the colour augmentations: uint8 (N, 3, S, S) channels-last (as the resampler
    writes them), flipped where `flipped`."""

    pixels: Tensor
    boxes: list[CropBox]
    flipped: list[bool]
    positions: Tensor  # (N, H·W, 2) float32


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    draws: list[float],
    ratio: tuple[float, float] = ASPECT_RATIO,
) -> CropBox:
    """torchvision's RandomResizedCrop box from uniforms: tries of (area, log aspect), then a centred box.

    `draws` holds 2 · _CROP_TRIES + 2 uniforms in [0, 1): an (area, aspect) pair per try, then top and left.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(_CROP_TRIES):
        target_area = area * (scale[0] + draws[2 * attempt] * (scale[1] - scale[0]))
        aspect = math.exp(log_low + draws[2 * attempt + 1] * (log_high - log_low))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(draws[-2] * (height - crop_h + 1))
            left = int(draws[-1] * (width - crop_w + 1))
            return CropBox(top, left, crop_h, crop_w)
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif image_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return CropBox((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w)


def grid_positions(boxes: Tensor | np.ndarray, grid: int, flipped: Tensor | np.ndarray) -> Tensor:
    """(N, grid², 2) float32 (y, x) centres of each box's grid × grid cells, row-major, mirrored if flipped.

    `boxes` (N, 4) holds (top, left, height, width) in pixels, `flipped` (N,) booleans. NumPy in float64:
    for a few dozen numbers it costs a tenth of the torch ops.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mirrored = np.asarray(flipped, dtype=bool).reshape(-1, 1)
    steps = np.arange(grid, dtype=np.float64) + 0.5
    # Column l of a flipped crop shows the box's column grid − 1 − l.
    column_steps = np.where(mirrored, steps[::-1], steps)
    count = boxes.shape[0]
    yx = np.empty((count, grid, grid, 2), dtype=np.float32)
    yx[..., 0] = (boxes[:, :1] + steps * (boxes[:, 2:3] / grid))[:, :, None]
    yx[..., 1] = (boxes[:, 1:2] + column_steps * (boxes[:, 3:4] / grid))[:, None, :]
    return torch.from_numpy(yx.reshape(count, grid * grid, 2))


def to_uint8_image(image: Image.Image | Tensor) -> Tensor:
    """A (3, H, W) uint8 tensor from a PIL image (converted to RGB once) or a uint8 (1 or 3, H, W) tensor."""
    if isinstance(image, Image.Image):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    if not isinstance(image, Tensor):
        raise TypeError(f"expected a PIL image or a uint8 tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a uint8 (3, H, W) or (1, H, W) tensor, got {image.dtype} {tuple(image.shape)}"
        )
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


class MultiCropTransform:
    """Callable on a PIL image or uint8 tensor -> MultiCropSample; fits `image_folder(root, transform)`."""

    def __init__(self, config: MultiCropConfig, colour_on_device: bool = False) -> None:
        self.config = config
        self.colour_on_device = colour_on_device
        self.groups = [(config.large_size, config.large_count, config.large_scale)]
        if config.small_count:
            self.groups.append((config.small_size, config.small_count, config.small_scale))
        # Within each size group crops alternate between the (even, odd) blur and solarisation chances.
        alternating = [index % 2 for _, count, _ in self.groups for index in range(count)]
        self.blur_p = np.array(config.blur_p, dtype=np.float64)[alternating]
        self.solarize_p = np.array(config.solarize_p, dtype=np.float64)[alternating]
        self.crop_draws = config.num_views * _CROP_DRAWS

    def crop_groups(self, image: Image.Image | Tensor) -> list[CropGroup]:
        """The geometric half: per size group, the boxes, flips, resized uint8 crops and positions."""
        return self._crop_groups(to_uint8_image(image), torch.rand(self.crop_draws))

    def _crop_groups(self, pixels: Tensor, draws: Tensor) -> list[CropGroup]:
        """crop_groups from the crops' uniforms, _CROP_DRAWS per crop, group after group."""
        height, width = pixels.shape[-2:]
        rows = draws.view(-1, _CROP_DRAWS).tolist()
        groups, first = [], 0
        for size, count, scale in self.groups:
            group_rows, first = rows[first : first + count], first + count
            boxes = [sample_crop_box(height, width, scale, crop_draws[:-1]) for crop_draws in group_rows]
            flipped = [crop_draws[-1] < FLIP_P for crop_draws in group_rows]
            crops = torch.empty(count, 3, size, size, dtype=torch.uint8, memory_format=torch.channels_last)
            for crop, (top, left, crop_h, crop_w), flip in zip(crops, boxes, flipped, strict=True):
                region = pixels[None, :, top : top + crop_h, left : left + crop_w]
                # torch's AVX2 uint8 resampler runs on contiguous channels-last input: faster, copy included.
                region = region.contiguous(memory_format=torch.channels_last)
                resized = F.interpolate(region, size=(size, size), mode="bicubic", antialias=True)[0]
                crop.copy_(resized.flip(-1) if flip else resized)
            mirrored = np.array(flipped) & (not self.config.ignore_flip)
            positions = grid_positions(np.array(boxes), self.config.grid(size), mirrored)
            groups.append(CropGroup(crops, boxes, flipped, positions))
        return groups

    def __call__(self, image: Image.Image | Tensor) -> MultiCropSample:
        """The sample's crops and positions, then its crops' colour parameters (drawn in that order from
        torch's global generator, in one call): coloured and normalised here, or shipped with the uint8
        crops."""
        pixels = to_uint8_image(image)
        draws = torch.rand(self.crop_draws + self.config.num_views * NUM_DRAWS)
        groups = self._crop_groups(pixels, draws[: self.crop_draws])
        colour = draws[self.crop_draws :].view(-1, NUM_DRAWS).numpy()
        params = colour_params(colour, self.blur_p, self.solarize_p)
        positions = [position for group in groups for position in group.positions.unbind(0)]
        if self.colour_on_device:
            crops = [crop for group in groups for crop in group.pixels.unbind(0)]
            return MultiCropSample(crops, positions, params)
        views, first = [], 0
        for group in groups:
            count = group.pixels.shape[0]
            images = group.pixels.to(torch.float32, memory_format=torch.contiguous_format)
            views.extend(augment_colours_(images, params[first : first + count]).unbind(0))
            first += count
        return MultiCropSample(views, positions)


def collate(
    batch: list[tuple[MultiCropSample, int]],
) -> tuple[list[Tensor] | Uint8Views, list[Tensor], Tensor]:
    """Batch (sample, label) pairs: (views, each (B, 3, S, S) — as Uint8Views when the samples carry colour
    parameters; positions, each (B, L, 2); labels (B,)). In a loader worker all of it is stacked into one
    shared-memory block (shared_batch.py). Channels-last views (the uint8 crops) stay channels-last: a plain
    copy (a transposing one costs 0.1 ms per 224 crop)."""
    samples, labels = zip(*batch, strict=True)
    views = [list(view) for view in zip(*(sample.views for sample in samples), strict=True)]
    channels_last = [view[0].stride(0) == 1 for view in views]
    parts = [
        [image.permute(1, 2, 0) for image in view] if last else view
        for view, last in zip(views, channels_last, strict=True)
    ]
    parts += [list(position) for position in zip(*(sample.positions for sample in samples), strict=True)]
    colour = samples[0].colour is not None
    if colour:
        parts.append([sample.colour for sample in samples])
    parts.append([torch.as_tensor(labels, dtype=torch.long)])
    stacked = stack_shared(parts)
    count = len(views)
    batch_views: list[Tensor] | Uint8Views = [
        view.permute(0, 3, 1, 2) if last else view
        for view, last in zip(stacked[:count], channels_last, strict=True)
    ]
    if colour:
        batch_views = Uint8Views(batch_views, stacked[-2])
    return batch_views, stacked[count : 2 * count], stacked[-1][0]
