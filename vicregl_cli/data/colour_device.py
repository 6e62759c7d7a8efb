"""The colour recipe applied on the training device to a batch of uint8 crops, from the colour parameters the
loader workers drew (photometric.draw_colour_params).

No random draw and no read back to the host: one fixed sequence of batched ops over the whole batch, each
crop's choices applied through 0 / 1 masks (an op a crop does not take is computed and discarded), so that
every rank makes, from the shipped parameters, the views the all-CPU path makes (photometric.augment_colours_)
to float rounding. The four jitter slots are each one blend (brightness, contrast or saturation, identity
for the crops whose slot holds the hue or that are not jittered) and one masked hue rotation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vicregl_cli.data.photometric import (
    BLUR_ON,
    BLUR_SIGMA_COLUMN,
    BRIGHTNESS_OP,
    CONTRAST_OP,
    GRAYSCALE_ON,
    HUE_OP,
    JITTER_FACTORS,
    JITTER_ON,
    JITTER_ORDER,
    SATURATION_OP,
    SOLARIZE_ON,
    blend_,
    blur_matrices,
    dense_blur,
    normalize_,
    rotate_hue_,
    solarize_,
)


def _per_crop(values: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1), to broadcast over a crop's pixels."""
    return values.view(-1, 1, 1, 1)


def _jitter_slot_(images: Tensor, params: Tensor, slot: int) -> Tensor:
    """Jitter slot `slot` of every crop: its blend (identity where the slot's op is the hue or the crop is
    not jittered), then its hue rotation where the slot's op is the hue."""
    jittered = params[:, JITTER_ON] > 0.5
    op = params[:, JITTER_ORDER][:, slot].long()
    factor = params[:, JITTER_FACTORS].gather(1, op.unsqueeze(1)).view(-1)
    is_contrast = jittered & (op == CONTRAST_OP)
    is_saturation = jittered & (op == SATURATION_OP)
    blends = is_contrast | is_saturation | (jittered & (op == BRIGHTNESS_OP))
    zero = torch.zeros_like(factor)
    blend_(
        images,
        _per_crop(torch.where(blends, factor, 1.0)),
        _per_crop(torch.where(is_saturation, 1.0 - factor, zero)),
        _per_crop(torch.where(is_contrast, 1.0 - factor, zero)),
    )
    is_hue = _per_crop(jittered & (op == HUE_OP))
    rotated = rotate_hue_(images.clone(), _per_crop(torch.where(is_hue.view(-1), factor, zero)))
    return torch.where(is_hue, rotated, images, out=images)


def colour_crops(crops: Tensor, params: Tensor) -> Tensor:
    """(N, 3, S, S) uint8 crops and their (N, NUM_PARAMS) colour parameters, on one device -> the normalised
    float32 views: jitter, grayscale, blur, solarisation, normalisation."""
    images = crops.to(torch.float32, memory_format=torch.contiguous_format)
    for slot in range(4):
        _jitter_slot_(images, params, slot)
    gray = params[:, GRAYSCALE_ON] > 0.5
    # Grayscale is the blend (0, 1, 0): 0·x + 1·luma(x), clamped; the others keep (1, 0, 0), x exactly.
    blend_(images, _per_crop((~gray).float()), _per_crop(gray.float()), None)
    blurred = dense_blur(images, blur_matrices(images.shape[-1], params[:, BLUR_SIGMA_COLUMN]))
    torch.where(_per_crop(params[:, BLUR_ON] > 0.5), blurred, images, out=images)
    solarised = solarize_(images.clone())
    torch.where(_per_crop(params[:, SOLARIZE_ON] > 0.5), solarised, images, out=images)
    return normalize_(images)


def apply_colours(
    crops: list[Tensor], colour: Tensor, dtype: torch.dtype, channels_last: bool
) -> list[Tensor]:
    """A batch's views from its uint8 crops (each (B, 3, S, S)) and colour parameters (B, V, NUM_PARAMS),
    all on the training device: normalised, in `dtype` (the autocast dtype), channels-last if asked."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [
        colour_crops(view, colour[:, index]).to(dtype=dtype, memory_format=memory_format)
        for index, view in enumerate(crops)
    ]
