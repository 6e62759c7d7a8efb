"""The VICRegL colour augmentations on a batch of same-size crops held as float tensors in [0, 255].

Colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8 in a random order per crop,
grayscale p 0.2, Gaussian blur and solarisation with per-crop probabilities, then ImageNet normalisation: the
reference recipe's distributions. Every random choice of a crop is drawn first, as one row of colour
parameters (`draw_colour_params`), so that the same row can be applied here on CPU or batched on the training
device (colour_device.py). On CPU a small crop costs more in per-operation overhead than in arithmetic, so
every step runs once over all the crops that take it, planned in Python from the parameters; a large crop
costs memory traffic, so the element-wise ops take one at a time (it stays in the core's cache), the hue
rotation uses few passes and the blur only the non-zero band of its matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
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
# Columns of a crop's colour parameters (float32, draw_colour_params): flags are 0 / 1, JITTER_ORDER holds
# the op (BRIGHTNESS_OP...) of each of the 4 jitter slots, JITTER_FACTORS the factor of each op.
JITTER_ON, JITTER_FACTORS, JITTER_ORDER = 0, slice(1, 5), slice(5, 9)
GRAYSCALE_ON, BLUR_ON, BLUR_SIGMA_COLUMN, SOLARIZE_ON = 9, 10, 11, 12
NUM_PARAMS = 13
_JITTER_RANGES = (BRIGHTNESS, CONTRAST, SATURATION, HUE)
_JITTER_LOWS = np.array([low for low, _ in _JITTER_RANGES])
_JITTER_SPANS = np.array([high - low for low, high in _JITTER_RANGES])
_IDENTITY_BLEND = (1.0, 0.0, 0.0)
_GRAYSCALE_BLEND = (0.0, 1.0, 0.0)


class _Constants(NamedTuple):
    luma: Tensor  # (3,)
    hue_offsets: Tensor  # (1, 3, 1, 1): HSV -> RGB phase of R, G, B (5, 3, 1), plus 1, minus 6
    norm_scale: Tensor  # (1, 3, 1, 1)
    norm_shift: Tensor


@lru_cache(maxsize=8)
def constants(device: torch.device) -> _Constants:
    """The recipe's constant tensors on `device`, copied there once (no host transfer inside a step)."""
    std = torch.tensor(IMAGENET_STD)
    return _Constants(
        torch.tensor(LUMA_WEIGHTS).to(device),
        torch.tensor([0.0, -2.0, -4.0]).view(1, 3, 1, 1).to(device),
        (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device),
        (torch.tensor(IMAGENET_MEAN) / std).view(1, 3, 1, 1).to(device),
    )


def draw_colour_params(blur_p: Sequence[float], solarize_p: Sequence[float]) -> Tensor:
    """(N, NUM_PARAMS) colour parameters of N crops from torch's global generator: image n is jittered with
    p 0.8 (factors and order drawn), made gray with p 0.2, blurred with p `blur_p[n]` (sigma uniform in
    [0.1, 2]) and solarised with p `solarize_p[n]`; the layout is the column constants above."""
    draws = torch.rand(len(blur_p), NUM_DRAWS).numpy()
    return colour_params(draws, np.asarray(blur_p, dtype=np.float64), np.asarray(solarize_p, np.float64))


def colour_params(draws: np.ndarray, blur_p: np.ndarray, solarize_p: np.ndarray) -> Tensor:
    """draw_colour_params from its (N, NUM_DRAWS) uniforms: NumPy over all the crops at once, in float64 as
    Python floats (one sample's crops in a few array ops), then float32."""
    u = draws.astype(np.float64)
    params = np.empty((len(u), NUM_PARAMS), dtype=np.float64)
    params[:, JITTER_ON] = u[:, 0] < JITTER_P
    params[:, JITTER_FACTORS] = _JITTER_LOWS + u[:, 1:5] * _JITTER_SPANS
    params[:, JITTER_ORDER] = np.argsort(u[:, 5:9], axis=1, kind="stable")
    params[:, GRAYSCALE_ON] = u[:, 9] < GRAYSCALE_P
    params[:, BLUR_ON] = u[:, 10] < blur_p
    params[:, BLUR_SIGMA_COLUMN] = BLUR_SIGMA[0] + u[:, 11] * (BLUR_SIGMA[1] - BLUR_SIGMA[0])
    params[:, SOLARIZE_ON] = u[:, 12] < solarize_p
    return torch.from_numpy(params.astype(np.float32))


def luma(images: Tensor) -> Tensor:
    """(N, 1, S, S) luma of RGB images (N, 3, S, S)."""
    batch, _, height, width = images.shape
    weights = constants(images.device).luma
    return torch.matmul(weights, images.reshape(batch, 3, height * width)).view(batch, 1, height, width)


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
            mean = torch.matmul(images.flatten(2).mean(2), constants(images.device).luma).view(-1, 1, 1, 1)
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
    """How many images an op with a dozen one-channel temporaries takes at once to stay in a core's cache
    (on CPU; an accelerator takes the whole batch in one call)."""
    if images.device.type != "cpu":
        return images.shape[0]
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
    return rotate_hue_(images, shift)


def rotate_hue_(images: Tensor, shift: Tensor) -> Tensor:
    """adjust_hue_ without the range check (a host read): for shifts known to lie in (-1/6, 1/6) turn."""
    step = _images_per_chunk(images)
    if step < images.shape[0]:
        for first in range(0, images.shape[0], step):
            rotate_hue_(images[first : first + step], shift[first : first + step])
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
    offsets = constants(images.device).hue_offsets
    distance = torch.add(hue, offsets, out=images).abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    return torch.addcmul(minv.sub_(chroma), distance, chroma, out=images)


def blur_matrices(size: int, sigmas: Tensor) -> Tensor:
    """(N, size, size) float32 matrices M on sigmas' device: M @ column = the column blurred by a Gaussian
    of sigmas[n] (computed in float64), edge pixels repeated.

    Entry (i, j) holds tap j − i (added diagonal by diagonal); the taps that fall off an edge add onto its
    column (cumulative sums from that end): no two taps are summed by atomic adds on a GPU (order varies).
    """
    device = sigmas.device
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=device, dtype=torch.float64)
    taps = torch.exp(-(offsets * offsets) / (2.0 * sigmas.double().view(-1, 1) ** 2))
    taps = taps / taps.sum(1, keepdim=True)
    # Taps under 1e-12 are dropped: denormal floats would make the matrix products ~20x slower on x86.
    taps = torch.where(taps > 1e-12, taps, 0.0)
    matrices = torch.zeros(taps.shape[0], size, size, device=device, dtype=torch.float64)
    by_offset = taps.t().unsqueeze(2).unbind(0)  # tap o of every matrix, (N, 1)
    for offset, tap in zip(range(-BLUR_RADIUS, BLUR_RADIUS + 1), by_offset, strict=True):
        if abs(offset) < size:
            matrices.diagonal(offset, 1, 2).add_(tap)
    padded = F.pad(taps, (1, 1))  # a zero before tap 0 and after the last: sums over no tap
    last, rows = padded.shape[1] - 1, torch.arange(size, device=device)
    # Row i's first column takes taps 0..R − i, its last column the taps from size − 1 − i + R on.
    matrices[:, :, 0] = padded.cumsum(1).index_select(1, (BLUR_RADIUS + 1 - rows).clamp_(0, last))
    from_end = padded.flip(1).cumsum(1).flip(1)
    matrices[:, :, -1] = from_end.index_select(1, (size + BLUR_RADIUS - rows).clamp_(0, last))
    return matrices.float()


def dense_blur(images: Tensor, matrices: Tensor) -> Tensor:
    """Each image (N, C, S, S) blurred by its matrix (N, S, S): columns M @ X, then rows (M @ X) @ Mᵀ."""
    matrices = matrices.unsqueeze(1)
    return torch.matmul(torch.matmul(matrices, images), matrices.transpose(-1, -2))


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
    matrices = blur_matrices(size, torch.tensor(sigmas, dtype=torch.float64))
    if size < BLUR_DENSE_BELOW:
        return images.copy_(dense_blur(images, matrices))
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
    table = constants(images.device)
    return images.mul_(table.norm_scale).sub_(table.norm_shift)


@dataclass
class _CropPlan:
    """One crop's augmentations: jitter steps as (op, factor) in order, grayscale, blur sigma, solarise."""

    jitter: list[tuple[int, float]]
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def plan_crop(params: Sequence[float]) -> _CropPlan:
    """A crop's augmentations from its row of colour parameters (layout: the column constants)."""
    jitter = []
    if params[JITTER_ON]:
        factors = params[JITTER_FACTORS]
        jitter = [(int(op), factors[int(op)]) for op in params[JITTER_ORDER]]
    sigma = params[BLUR_SIGMA_COLUMN] if params[BLUR_ON] else None
    return _CropPlan(jitter, bool(params[GRAYSCALE_ON]), sigma, bool(params[SOLARIZE_ON]))


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


def augment_colours_(images: Tensor, params: Tensor) -> Tensor:
    """In place on (N, 3, S, S) floats in [0, 255]: the colour augmentations of `params` (N, NUM_PARAMS),
    from draw_colour_params, then normalisation."""
    plans = [plan_crop(row) for row in params.tolist()]
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
