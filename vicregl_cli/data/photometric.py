"""The VICRegL colour augmentations on a batch of same-size crops held as float tensors in [0, 255].

Colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8 in a random order per crop,
grayscale p 0.2, Gaussian blur and solarisation with per-crop probabilities, then ImageNet normalisation: the
reference recipe's distributions. On CPU a small crop costs more in per-operation overhead than in
arithmetic, so every step runs once over all the crops that take it, and the random draws are planned in
Python; a large crop costs memory traffic, so the element-wise ops take one at a time (it stays in the
core's cache), the hue rotation uses few passes and the blur only the non-zero band of its matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

BRIGHTNESS = (0.6, 1.4)
CONTRAST = (0.6, 1.4)
SATURATION = (0.8, 1.2)
HUE = (-0.1, 0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
BLUR_RADIUS = 8  # 4 × the largest sigma: the kernel keeps all but 6e-5 of the Gaussian's mass
BLUR_BAND = 56  # output columns per banded product in gaussian_blur_
BLUR_DENSE_BELOW = 128  # smaller images are blurred with dense products (fewer, larger calls win there)
SOLARIZE_THRESHOLD = 128
CHUNK_PIXELS = 64 * 1024  # one 224² crop, or six 96² crops, per call of the element-wise colour ops
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
BRIGHTNESS_OP, CONTRAST_OP, SATURATION_OP, HUE_OP = range(4)
# Uniforms drawn per crop, in this order: jitter on, brightness, contrast, saturation, hue, 4 keys whose
# argsort is the jitter order, grayscale on, blur on, blur sigma, solarise on.
NUM_DRAWS = 13

_LUMA = torch.tensor(LUMA_WEIGHTS)
# HSV -> RGB phase of R, G, B (5, 3, 1), plus 1, minus 6: e − 6 in adjust_hue_.
_HUE_OFFSETS = torch.tensor([0.0, -2.0, -4.0]).view(1, 3, 1, 1)
_NORM_SCALE = (1.0 / (255.0 * torch.tensor(IMAGENET_STD))).view(1, 3, 1, 1)
_NORM_SHIFT = (torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
_BLUR_SOURCES: dict[int, Tensor] = {}
_IDENTITY_BLEND = (1.0, 0.0, 0.0)
_GRAYSCALE_BLEND = (0.0, 1.0, 0.0)


def luma(images: Tensor) -> Tensor:
    """(N, 1, S, S) luma of RGB images (N, 3, S, S)."""
    batch, _, height, width = images.shape
    return torch.matmul(_LUMA, images.view(batch, 3, height * width)).view(batch, 1, height, width)


def blend_(images: Tensor, factor: Tensor, gray_weight: Tensor | None, mean_weight: Tensor | None) -> Tensor:
    """In place: clamp(f·x + g·luma(x) + m·mean luma(x), 0, 255); weights (N, 1, 1, 1), None meaning 0.

    Brightness is (f, 0, 0), contrast (f, 0, 1 − f), saturation (f, 1 − f, 0): torchvision's / PIL's blends.
    """
    step = _images_per_chunk(images)
    if step < images.shape[0]:
        for first in range(0, images.shape[0], step):
            chunk = slice(first, first + step)
            blend_(
                images[chunk],
                factor[chunk],
                None if gray_weight is None else gray_weight[chunk],
                None if mean_weight is None else mean_weight[chunk],
            )
        return images
    if gray_weight is None and mean_weight is None:
        return images.mul_(factor).clamp_(0.0, 255.0)
    gray = luma(images) if gray_weight is not None else None
    if mean_weight is not None:
        if gray is not None:
            mean = gray.mean((2, 3), keepdim=True)
        else:
            mean = torch.matmul(images.flatten(2).mean(2), _LUMA).view(-1, 1, 1, 1)
        offset = mean.mul_(mean_weight)
    if gray is None:
        base = offset
    else:
        base = gray.mul_(gray_weight)
        if mean_weight is not None:
            base.add_(offset)
    # g·luma + m·mean first, then f·x added in the same pass that writes the images.
    return torch.addcmul(base, images, factor, out=images).clamp_(0.0, 255.0)


def _images_per_chunk(images: Tensor) -> int:
    """How many images an op with a dozen one-channel temporaries takes at once to stay in a core's cache."""
    return max(1, CHUNK_PIXELS // (images.shape[-2] * images.shape[-1]))


def adjust_hue_(images: Tensor, shift: Tensor) -> Tensor:
    """In place: rotate the HSV hue by `shift` (N, 1, 1, 1) turns, keeping value and saturation.

    As torchvision's adjust_hue: with hue h in sextants, channel k becomes max − chroma · clamp(min(t, 4 − t),
    0, 1), t = (h + 6·shift + 5, 3, 1 for R, G, B) mod 6. That trapezoid is 2 − clamp(d, 1, 2) with d the
    circular distance from t to 2, and d = ||e − 6| − 3| for e = t + 1 unwrapped, which lies in [0, 12) when
    |shift| < 1/6 turn (the recipe's is ≤ 0.1): no modulo; the new value is (min − C) + C · clamp(d, 1, 2).
    The sector of the maximum comes from 0/1 float masks (torch.where is slow on CPU); where two channels
    tie for the maximum, R wins over G over B, as torchvision's.
    """
    if shift.numel() and shift.abs().max().item() >= 1.0 / 6.0:
        raise ValueError(f"hue shifts must lie in (-1/6, 1/6) turn, got {shift.flatten().tolist()}")
    step = _images_per_chunk(images)
    if step < images.shape[0]:
        for first in range(0, images.shape[0], step):
            adjust_hue_(images[first : first + step], shift[first : first + step])
        return images
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    maxv = torch.maximum(red, green)
    torch.maximum(maxv, blue, out=maxv)
    minv = torch.minimum(red, green)
    torch.minimum(minv, blue, out=minv)
    chroma = maxv - minv
    # 0 where red (green) is the maximum, else 1; a float `out` makes the comparison as fast as a subtraction.
    not_red = torch.ne(maxv, red, out=torch.empty_like(maxv))
    not_green = torch.ne(maxv, green, out=torch.empty_like(maxv))
    # Sextant hue times chroma if the maximum is R, G, B: (g − b), (b − r) + 2C, (r − g) + 4C.
    red_hue = green - blue
    green_hue = (blue - red).add_(chroma, alpha=2.0)
    hue = (red - green).add_(chroma, alpha=4.0)
    # lerp with a 0/1 weight returns start or end exactly.
    torch.lerp(green_hue, hue, not_green, out=hue)
    torch.lerp(red_hue, hue, not_red, out=hue)
    hue.div_(chroma.clamp(min=1e-6)).add_(shift, alpha=6.0)
    distance = torch.add(hue, _HUE_OFFSETS, out=images).abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    return torch.addcmul(minv.sub_(chroma), distance, chroma, out=images)


def _blur_sources(size: int) -> Tensor:
    """(size, 2·radius + 1) source column of each tap of each output column, edge pixels repeated."""
    if size not in _BLUR_SOURCES:
        offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1)
        _BLUR_SOURCES[size] = (torch.arange(size).unsqueeze(1) + offsets).clamp_(0, size - 1)
    return _BLUR_SOURCES[size]


def blur_matrices(size: int, sigmas: Sequence[float]) -> Tensor:
    """(N, size, size) matrices M: M @ column = the column blurred by a Gaussian of sigmas[n], edges kept."""
    kernels = []
    for sigma in sigmas:
        offsets = range(-BLUR_RADIUS, BLUR_RADIUS + 1)
        taps = [math.exp(-(offset * offset) / (2.0 * sigma * sigma)) for offset in offsets]
        total = sum(taps)
        # Taps under 1e-12 are dropped: denormal floats would make the matrix products ~20x slower on x86.
        kernels.append([tap / total if tap / total > 1e-12 else 0.0 for tap in taps])
    sources = _blur_sources(size)
    count, span = len(kernels), sources.shape[1]
    weights = torch.tensor(kernels).unsqueeze(1).expand(count, size, span)
    return torch.zeros(count, size, size).scatter_add_(2, sources.expand(count, size, span), weights)


def _blur_bands(size: int) -> list[tuple[int, int, int, int]]:
    """(first, end, window first, window end): output columns first..end − 1 read only the window columns."""
    span = min(size, BLUR_BAND + 2 * BLUR_RADIUS)
    bands = []
    for first in range(0, size, BLUR_BAND):
        window = min(max(first - BLUR_RADIUS, 0), size - span)
        bands.append((first, min(size, first + BLUR_BAND), window, window + span))
    return bands


def gaussian_blur_(images: Tensor, sigmas: Sequence[float]) -> Tensor:
    """In place: separable Gaussian blur, edges repeated (as PIL's GaussianBlur), one sigma per image.

    Rows X @ Mᵀ then columns M @ X with the banded blur matrix M: for large images, only each band's window of
    2·radius + BLUR_BAND columns enters the products (the rest of M is 0); small ones take the dense products.
    """
    size = images.shape[-1]
    matrices = blur_matrices(size, sigmas)
    if size < BLUR_DENSE_BELOW:
        matrices = matrices.unsqueeze(1)
        return images.copy_(torch.matmul(torch.matmul(matrices, images), matrices.transpose(-1, -2)))
    bands = _blur_bands(size)
    channels = images.shape[1]
    rows_blurred = torch.empty(channels * size, size)
    channel_rows = rows_blurred.view(channels, size, size)
    for image, matrix in zip(images, matrices, strict=True):
        flat = image.view(channels * size, size)
        for first, end, start, stop in bands:
            torch.mm(flat[:, start:stop], matrix[first:end, start:stop].t(), out=rows_blurred[:, first:end])
        for first, end, start, stop in bands:
            torch.matmul(matrix[first:end, start:stop], channel_rows[:, start:stop], out=image[:, first:end])
    return images


def solarize_(images: Tensor) -> Tensor:
    """In place: x ≥ 128 -> 255 − x (PIL's solarize), as 127.5 − |x − 127.5| (≥ 127.5 rounds to ≥ 128)."""
    middle = SOLARIZE_THRESHOLD - 0.5
    return images.sub_(middle).abs_().neg_().add_(middle)


def normalize_(images: Tensor) -> Tensor:
    """In place: [0, 255] -> ImageNet-normalised (x / 255 − mean) / std."""
    return images.mul_(_NORM_SCALE).sub_(_NORM_SHIFT)


@dataclass
class _CropPlan:
    """One crop's augmentations: jitter steps as (op, factor) in order, grayscale, blur sigma, solarise."""

    jitter: list[tuple[int, float]]
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def _lerp(u: float, bounds: tuple[float, float]) -> float:
    return bounds[0] + u * (bounds[1] - bounds[0])


def plan_crop(u: Sequence[float], blur_p: float, solarize_p: float) -> _CropPlan:
    """Turn a crop's NUM_DRAWS uniforms into its augmentations (layout in the NUM_DRAWS comment)."""
    jitter = []
    if u[0] < JITTER_P:
        factors = (_lerp(u[1], BRIGHTNESS), _lerp(u[2], CONTRAST), _lerp(u[3], SATURATION), _lerp(u[4], HUE))
        order = sorted(range(4), key=lambda op: u[5 + op])
        jitter = [(op, factors[op]) for op in order]
    sigma = _lerp(u[11], BLUR_SIGMA) if u[10] < blur_p else None
    return _CropPlan(jitter, u[9] < GRAYSCALE_P, sigma, u[12] < solarize_p)


def _apply_to_(images: Tensor, chosen: list[int], step: Callable[..., Tensor], *arguments) -> None:
    """Run the in-place `step` on images[chosen]: a view if consecutive, else a gathered copy put back."""
    if not chosen:
        return
    first, last = chosen[0], chosen[-1]
    if last - first + 1 == len(chosen):
        step(images[first : last + 1], *arguments)
        return
    # Stacking views and copying back image by image: plain copies, several times faster than
    # index_select / index_copy_ on CPU.
    subset = torch.stack([images[index] for index in chosen])
    step(subset, *arguments)
    for index, result in zip(chosen, subset, strict=True):
        images[index].copy_(result)


def _blend_weights(op: int, factor: float) -> tuple[float, float, float]:
    """(f, g, m) of blend_ for a jitter step: brightness (f, 0, 0), contrast (f, 0, 1 − f), saturation
    (f, 1 − f, 0)."""
    return (
        factor,
        1.0 - factor if op == SATURATION_OP else 0.0,
        1.0 - factor if op == CONTRAST_OP else 0.0,
    )


class _BlendSpan(NamedTuple):
    """A blend_ over images[first : first + len(table)] with table rows (f, g, m), each (1, 1, 1)."""

    first: int
    table: Tensor
    any_gray: bool
    any_mean: bool


def _blend_spans(steps: list[dict[int, tuple[float, float, float]]]) -> list[_BlendSpan | None]:
    """Per step, the blend of images[n] with weights[n] for each n, as one blend over the span of those n.

    Images inside a span but not chosen get (1, 0, 0): 1·x + 0·luma, clamped to [0, 255], is x exactly, so
    no gathered copy is needed when the chosen images are not consecutive. One tensor holds every table.
    """
    rows: list[tuple[float, float, float]] = []
    bounds = []
    for weights in steps:
        first, last = (min(weights), max(weights)) if weights else (0, -1)
        span = [weights.get(index, _IDENTITY_BLEND) for index in range(first, last + 1)]
        bounds.append((first, len(rows), len(span), any(row[1] for row in span), any(row[2] for row in span)))
        rows.extend(span)
    table = torch.tensor(rows).view(-1, 3, 1, 1, 1) if rows else torch.empty(0)
    return [
        _BlendSpan(first, table[start : start + count], any_gray, any_mean) if count else None
        for first, start, count, any_gray, any_mean in bounds
    ]


def _blend_span_(images: Tensor, span: _BlendSpan | None) -> None:
    if span is None:
        return
    blend_(
        images[span.first : span.first + span.table.shape[0]],
        span.table[:, 0],
        span.table[:, 1] if span.any_gray else None,
        span.table[:, 2] if span.any_mean else None,
    )


def _hue_slot_(images: Tensor, shifts: list[float]) -> Tensor:
    return adjust_hue_(images, torch.tensor(shifts).view(-1, 1, 1, 1))


def augment_colours_(images: Tensor, blur_p: Sequence[float], solarize_p: Sequence[float]) -> Tensor:
    """In place on (N, 3, S, S) floats in [0, 255]: the recipe's colour augmentations, then normalisation.

    Image n is jittered with p 0.8, made gray with p 0.2, blurred with p `blur_p[n]` (sigma uniform in
    [0.1, 2]) and solarised with p `solarize_p[n]`; the draws come from torch's global generator.
    """
    draws = torch.rand(images.shape[0], NUM_DRAWS).tolist()
    plans = [plan_crop(u, pb, ps) for u, pb, ps in zip(draws, blur_p, solarize_p, strict=True)]
    blend_steps, hue_steps = [], []
    for slot in range(4):
        slot_steps = [(index, plan.jitter[slot]) for index, plan in enumerate(plans) if plan.jitter]
        blend_steps.append({index: _blend_weights(op, f) for index, (op, f) in slot_steps if op != HUE_OP})
        hue_steps.append([(index, factor) for index, (op, factor) in slot_steps if op == HUE_OP])
    # Grayscale is the blend (0, 1, 0): 0·x + 1·luma(x), clamped, is luma(x) exactly.
    blend_steps.append({index: _GRAYSCALE_BLEND for index, plan in enumerate(plans) if plan.grayscale})
    spans = _blend_spans(blend_steps)
    for span, hues in zip(spans, hue_steps, strict=False):
        _blend_span_(images, span)
        _apply_to_(images, [index for index, _ in hues], _hue_slot_, [shift for _, shift in hues])
    _blend_span_(images, spans[-1])
    blurred = [(index, plan.blur_sigma) for index, plan in enumerate(plans) if plan.blur_sigma is not None]
    _apply_to_(images, [index for index, _ in blurred], gaussian_blur_, [sigma for _, sigma in blurred])
    _apply_to_(images, [index for index, plan in enumerate(plans) if plan.solarize], solarize_)
    return normalize_(images)
