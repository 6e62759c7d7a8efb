"""The VICRegL colour augmentations on a batch of same-size crops held as float tensors in [0, 255].

Colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8 in a random order per crop,
grayscale p 0.2, Gaussian blur and solarisation with per-crop probabilities, then ImageNet normalisation: the
reference recipe's distributions. On CPU a small crop costs more in per-operation overhead than in
arithmetic, so every step runs once over all the crops that take it, and the random draws are planned in
Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BRIGHTNESS = (0.6, 1.4)
CONTRAST = (0.6, 1.4)
SATURATION = (0.8, 1.2)
HUE = (-0.1, 0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
BLUR_RADIUS = 8  # 4 × the largest sigma: the kernel keeps all but 6e-5 of the Gaussian's mass
SOLARIZE_THRESHOLD = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
BRIGHTNESS_OP, CONTRAST_OP, SATURATION_OP, HUE_OP = range(4)
# Uniforms drawn per crop, in this order: jitter on, brightness, contrast, saturation, hue, 4 keys whose
# argsort is the jitter order, grayscale on, blur on, blur sigma, solarise on.
NUM_DRAWS = 13

_LUMA = torch.tensor(LUMA_WEIGHTS)
_HUE_PHASES = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)  # HSV -> RGB phase of R, G, B
_SECTOR_STARTS = torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1)  # hue sector of a red, green, blue maximum
_NEXT_CHANNEL = torch.tensor([1, 2, 0])
_PREVIOUS_CHANNEL = torch.tensor([2, 0, 1])
_NORM_SCALE = (1.0 / (255.0 * torch.tensor(IMAGENET_STD))).view(1, 3, 1, 1)
_NORM_SHIFT = (torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
_BLUR_SOURCES: dict[int, Tensor] = {}


def luma(images: Tensor) -> Tensor:
    """(N, 1, S, S) luma of RGB images (N, 3, S, S)."""
    batch, _, height, width = images.shape
    return torch.matmul(_LUMA, images.view(batch, 3, height * width)).view(batch, 1, height, width)


def blend_(images: Tensor, factor: Tensor, gray_weight: Tensor | None, mean_weight: Tensor | None) -> Tensor:
    """In place: clamp(f·x + g·luma(x) + m·mean luma(x), 0, 255); weights (N, 1, 1, 1), None meaning 0.

    Brightness is (f, 0, 0), contrast (f, 0, 1 − f), saturation (f, 1 − f, 0): torchvision's / PIL's blends.
    """
    gray = luma(images) if gray_weight is not None else None
    if mean_weight is not None:
        if gray is not None:
            mean = gray.mean((2, 3), keepdim=True)
        else:
            mean = torch.matmul(images.mean((2, 3)), _LUMA).view(-1, 1, 1, 1)
        offset = mean.mul_(mean_weight)
    images.mul_(factor)
    if gray is not None:
        images.addcmul_(gray, gray_weight)
    if mean_weight is not None:
        images.add_(offset)
    return images.clamp_(0.0, 255.0)


def adjust_hue_(images: Tensor, shift: Tensor) -> Tensor:
    """In place: rotate the HSV hue by `shift` (N, 1, 1, 1) turns, keeping value and saturation.

    As torchvision's adjust_hue: with hue h in sextants, channel k becomes max − chroma · clamp(min(t, 4 − t),
    0, 1), t = (h + 6·shift + 5, 3, 1 for R, G, B) mod 6. The sector of the maximum comes from arithmetic
    masks (torch.where is slow on CPU); where two channels tie for the maximum, both sectors give one hue.
    """
    maxv = images.amax(1, keepdim=True)
    chroma = maxv - images.amin(1, keepdim=True)
    not_max = (maxv - images).mul_(1e30).clamp_(max=1.0)  # 0 where the channel is the maximum, else 1
    # Sextant hue times chroma if the maximum is R, G, B: (g − b), (b − r) + 2C, (r − g) + 4C.
    candidates = images.index_select(1, _NEXT_CHANNEL).sub_(images.index_select(1, _PREVIOUS_CHANNEL))
    candidates.addcmul_(chroma, _SECTOR_STARTS)
    first, second, third = candidates.split(1, dim=1)
    hue = (third - second).mul_(not_max[:, 1:2]).add_(second).sub_(first).mul_(not_max[:, 0:1]).add_(first)
    hue.div_(chroma.clamp(min=1e-6)).add_(shift, alpha=6.0)
    phase = hue + _HUE_PHASES
    phase.sub_((phase * (1.0 / 6.0)).floor_().mul_(6.0))
    fraction = torch.minimum(phase, 4.0 - phase, out=phase).clamp_(0.0, 1.0).mul_(chroma)
    return torch.sub(maxv, fraction, out=images)


def grayscale_(images: Tensor) -> Tensor:
    """In place: every channel set to the luma (RandomGrayscale with 3 output channels)."""
    return images.copy_(luma(images).expand_as(images))


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


def gaussian_blur_(images: Tensor, sigmas: Sequence[float]) -> Tensor:
    """In place: separable Gaussian blur, edges repeated (as PIL's GaussianBlur), one sigma per image.

    Two matrix products per image (M @ X @ Mᵀ): on CPU faster than a depthwise convolution.
    """
    matrices = blur_matrices(images.shape[-1], sigmas).unsqueeze(1)
    return images.copy_(torch.matmul(torch.matmul(matrices, images), matrices.transpose(-1, -2)))


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
    index = torch.tensor(chosen)
    subset = images.index_select(0, index)
    step(subset, *arguments)
    images.index_copy_(0, index, subset)


def _blend_slot_(images: Tensor, steps: list[tuple[int, float]]) -> Tensor:
    """One jitter slot for images whose step there is a blend: (op, factor) per image."""
    weights = torch.tensor(
        [
            [factor, 1.0 - factor if op == SATURATION_OP else 0.0, 1.0 - factor if op == CONTRAST_OP else 0.0]
            for op, factor in steps
        ]
    ).view(len(steps), 3, 1, 1, 1)
    any_saturation = any(op == SATURATION_OP for op, _ in steps)
    any_contrast = any(op == CONTRAST_OP for op, _ in steps)
    return blend_(
        images,
        weights[:, 0],
        weights[:, 1] if any_saturation else None,
        weights[:, 2] if any_contrast else None,
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
    for slot in range(4):
        slot_steps = [(index, plan.jitter[slot]) for index, plan in enumerate(plans) if plan.jitter]
        blends = [(index, step) for index, step in slot_steps if step[0] != HUE_OP]
        hues = [(index, step) for index, step in slot_steps if step[0] == HUE_OP]
        _apply_to_(images, [index for index, _ in blends], _blend_slot_, [step for _, step in blends])
        _apply_to_(images, [index for index, _ in hues], _hue_slot_, [step[1] for _, step in hues])
    _apply_to_(images, [index for index, plan in enumerate(plans) if plan.grayscale], grayscale_)
    blurred = [(index, plan.blur_sigma) for index, plan in enumerate(plans) if plan.blur_sigma is not None]
    _apply_to_(images, [index for index, _ in blurred], gaussian_blur_, [sigma for _, sigma in blurred])
    _apply_to_(images, [index for index, plan in enumerate(plans) if plan.solarize], solarize_)
    return normalize_(images)
