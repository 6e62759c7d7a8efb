"""What the rest of the code knows about a backbone without building it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: family, stage widths, output stride and the norm its projector heads use."""

    name: str
    family: str  # "resnet" | "convnext"
    stage_widths: tuple[int, int, int, int]
    output_stride: int  # 32 for every registry entry (less when a ResNet is dilated)
    representation_size: int  # == stage_widths[-1]
    norm: str  # "batch" (resnet) | "layer" (convnext): the norm the projector heads use
