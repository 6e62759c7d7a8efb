"""`vicregl pca`: principal-component maps of a backbone's dense features, as DINOv2's figures draw them.

Per backbone, over the patches of all given images together: a first PCA whose first component, thresholded
at 0, splits foreground from background (its sign chosen so that the foreground is the smaller side); a second
PCA on the foreground patches only, whose 3 components (min-max scaled each) are the red, green and blue of
each foreground patch; background patches are black. One PNG: a row per image, the image then one map per
backbone (docs/pca.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from sklearn.decomposition import PCA
from torch import Tensor
from torchvision import transforms

from vicregl_cli.backbones import WeightsRef
from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.dense.features import dense_model, patch_features, stage_stride
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.features import INTERPOLATION
from vicregl_cli.files import write_atomic

CELL = 128  # side of one panel of the figure, pixels
HEADER = 20  # height of the column titles, pixels
TITLE_COLOUR = (0, 0, 0)


@dataclass(frozen=True)
class PcaSettings:
    """What `vicregl pca` draws: these images, at this input size, from this stage of each backbone."""

    images: tuple[Path, ...]
    out: Path
    stage: int = 4  # 1..4; 4 = the last stage (the backbone's output map)
    image_size: int = 224


def check_settings(settings: PcaSettings, weights: list[WeightsRef]) -> None:
    """Every check before any compute: a .png output, a stage 1..4, inputs of at least 2 x 2 patches."""
    if not settings.images:
        raise UserError("give at least one image")
    if not weights:
        raise UserError("give at least one --weights")
    if settings.out.suffix.lower() != ".png":
        raise UserError(f"--out {settings.out}: the figure is a PNG; name it *.png")
    for ref in weights:
        stride = stage_stride(ref.backbone, settings.stage, dilate=False)
        if settings.image_size < 2 * stride:
            raise UserError(
                f"--image-size {settings.image_size} gives fewer than 2 x 2 patches at stage {settings.stage}"
                f" of {ref.backbone} (stride {stride}): use --image-size {2 * stride} or more"
            )


def read_crop(path: Path, image_size: int) -> Image.Image:
    """The image as the backbone sees it: short side to `image_size` (bicubic), centre crop, RGB."""
    resize = transforms.Resize(image_size, INTERPOLATION)
    crop = transforms.Compose([resize, transforms.CenterCrop(image_size)])
    try:
        with Image.open(path) as image:
            return crop(image.convert("RGB"))
    except OSError as error:  # missing file, not an image, truncated
        raise UserError(f"cannot read image {path}: {error}") from error


def input_batch(crops: list[Image.Image]) -> Tensor:
    """The crops as one normalised batch (N, 3, S, S)."""
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([normalise(crop) for crop in crops])


def dense_features(weights: WeightsRef, batch: Tensor, stage: int) -> Tensor:
    """The patch features `vicregl dense` reads (stage 1..4 of the backbone in eval mode, ConvNeXt's last
    after its final LayerNorm) of a batch of square images, as maps: (N, h, w, C)."""
    patches = patch_features(dense_model(weights, dilate=False, device=torch.device("cpu")), batch, stage)
    side = math.isqrt(patches.shape[1])
    return patches.reshape(len(batch), side, side, -1).float()


def foreground_mask(features: np.ndarray) -> np.ndarray:
    """Which patches (rows of `features`, P x C) are foreground: first principal component > 0, its sign
    chosen so that the positive side is the smaller one (a tie keeps scikit-learn's sign). Constant: none."""
    if np.ptp(features, axis=0).max() == 0:
        return np.zeros(len(features), dtype=bool)
    score = PCA(n_components=1).fit_transform(features)[:, 0]
    if (score > 0).sum() > (score < 0).sum():
        score = -score
    return score > 0


def min_max(values: np.ndarray) -> np.ndarray:
    """Each column scaled to [0, 1] (a constant column becomes 0.5)."""
    low, high = values.min(axis=0), values.max(axis=0)
    span = high - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.5)


def patch_colours(features: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] per patch (P x 3): the foreground's own 3 principal components, min-max scaled each;
    background black. n foreground patches span at most n - 1 directions: with fewer than 4 patches (or 3
    channels) the missing components stay 0."""
    colours = np.zeros((len(features), 3))
    foreground = foreground_mask(features)
    inside = features[foreground]
    components = min(3, len(inside) - 1, features.shape[1])
    if components > 0:
        colours[foreground, :components] = min_max(PCA(n_components=components).fit_transform(inside))
    return colours


def pca_maps(features: Tensor) -> np.ndarray:
    """(N, h, w, C) features of N images -> (N, h, w, 3) colours; one PCA fitted on all their patches."""
    count, height, width, channels = features.shape
    flat = features.reshape(-1, channels).double().numpy()
    return patch_colours(flat).reshape(count, height, width, 3)


def column_label(ref: WeightsRef) -> str:
    """A column title: `random(seed=0)`, or the file's folder and name (demo files are all backbone.pth)."""
    if ref.path is None:
        return ref.label
    return f"{ref.path.parent.name}/{ref.path.name}"


def draw_figure(crops: list[Image.Image], maps: list[np.ndarray], labels: list[str]) -> Image.Image:
    """The grid: a title row, then a row per image: its crop, then each backbone's map (patches as blocks)."""
    columns = 1 + len(maps)
    figure = Image.new("RGB", (columns * CELL, HEADER + len(crops) * CELL), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for column, label in enumerate(["image", *labels]):
        draw.text((column * CELL + 4, 4), label, fill=TITLE_COLOUR, font=font)
    for row, crop in enumerate(crops):
        top = HEADER + row * CELL
        figure.paste(crop.resize((CELL, CELL), Image.Resampling.BICUBIC), (0, top))
        for column, backbone_maps in enumerate(maps, start=1):
            pixels = Image.fromarray(np.round(backbone_maps[row] * 255).astype(np.uint8))
            figure.paste(pixels.resize((CELL, CELL), Image.Resampling.NEAREST), (column * CELL, top))
    return figure


def run_pca(settings: PcaSettings, weights: list[WeightsRef]) -> Path:
    """Check, read the images, compute each backbone's maps, write the PNG atomically; returns its path."""
    check_settings(settings, weights)
    crops = [read_crop(path, settings.image_size) for path in settings.images]
    batch = input_batch(crops)
    maps = [pca_maps(dense_features(ref, batch, settings.stage)) for ref in weights]
    figure = draw_figure(crops, maps, [column_label(ref) for ref in weights])
    return write_atomic(settings.out, lambda temporary: figure.save(temporary, format="PNG"))
