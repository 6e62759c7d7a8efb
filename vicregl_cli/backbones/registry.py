"""The backbone registry: name -> architecture and widths, building a randomly initialised trunk."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vicregl_cli.backbones.convnext import ConvNeXtTrunk
from vicregl_cli.backbones.resnet import ResNetTrunk
from vicregl_cli.backbones.spec import BackboneSpec
from vicregl_cli.errors import UserError


@dataclass(frozen=True)
class ResNetLayout:
    """A ResNet entry: block type, blocks per stage, channels after the stem, and the stem (ImageNet's 7 × 7
    stride-2 convolution + max-pool: output stride 32; the small-input 3 × 3 stride-1 one: stride 8)."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    base_width: int = 64
    small_stem: bool = False

    def spec(self, name: str) -> BackboneSpec:
        widths = tuple(self.base_width * self.block.expansion * 2**i for i in range(4))
        return BackboneSpec(name, "resnet", widths, 8 if self.small_stem else 32, widths[-1], "batch")


def _convnext_spec(name: str, first_width: int) -> BackboneSpec:
    widths = tuple(first_width * 2**i for i in range(4))
    return BackboneSpec(name, "convnext", widths, 32, widths[-1], "layer")


_RESNETS: dict[str, ResNetLayout] = {
    "resnet18": ResNetLayout(BasicBlock, (2, 2, 2, 2)),
    "resnet34": ResNetLayout(BasicBlock, (3, 4, 6, 3)),
    "resnet50": ResNetLayout(Bottleneck, (3, 4, 6, 3)),
    "resnet101": ResNetLayout(Bottleneck, (3, 4, 23, 3)),
    "resnet152": ResNetLayout(Bottleneck, (3, 8, 36, 3)),
    "resnet50x2": ResNetLayout(Bottleneck, (3, 4, 6, 3), 128),
    "resnet50x4": ResNetLayout(Bottleneck, (3, 4, 6, 3), 256),
    "resnet50x5": ResNetLayout(Bottleneck, (3, 4, 6, 3), 320),
    "resnet200x2": ResNetLayout(Bottleneck, (3, 24, 36, 3), 128),
    "resnet18_small": ResNetLayout(BasicBlock, (2, 2, 2, 2), small_stem=True),
    "resnet34_small": ResNetLayout(BasicBlock, (3, 4, 6, 3), small_stem=True),
    "resnet50_small": ResNetLayout(Bottleneck, (3, 4, 6, 3), small_stem=True),
    # The miniature's backbone (docs/miniature.md): one basic block per stage, 16 channels after the stem.
    "resnet10_small_w16": ResNetLayout(BasicBlock, (1, 1, 1, 1), base_width=16, small_stem=True),
}
_CONVNEXTS: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "convnext_tiny": ((3, 3, 9, 3), 96),
    "convnext_small": ((3, 3, 27, 3), 96),
    "convnext_base": ((3, 3, 27, 3), 128),
    "convnext_large": ((3, 3, 27, 3), 192),
    "convnext_xlarge": ((3, 3, 27, 3), 256),
}

BACKBONES: dict[str, BackboneSpec] = {
    **{name: layout.spec(name) for name, layout in _RESNETS.items()},
    **{name: _convnext_spec(name, first_width) for name, (_, first_width) in _CONVNEXTS.items()},
}

_OVERRIDES = {
    "resnet": ("zero_init_residual", "replace_stride_with_dilation"),
    "convnext": ("drop_path_rate", "layer_scale_init_value"),
}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`; an unknown name is a UserError that lists the valid ones."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """A randomly initialised backbone (module with `.spec`, `forward`, `forward_stages`).

    ResNet overrides: zero_init_residual (default True, as VICReg/VICRegL pretrain),
    replace_stride_with_dilation (3 bools; the module's spec.output_stride follows).
    ConvNeXt overrides: drop_path_rate (default 0.1), layer_scale_init_value (default 0: no `gamma`).
    """
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(_OVERRIDES[spec.family]))
    if unknown:
        options = ", ".join(_OVERRIDES[spec.family])
        raise UserError(f"{name} does not take {', '.join(unknown)}; its options are: {options}")
    if spec.family == "convnext":
        depths, _ = _CONVNEXTS[name]
        return ConvNeXtTrunk(spec, depths, **overrides)
    layout = _RESNETS[name]
    dilation = tuple(overrides.get("replace_stride_with_dilation", (False, False, False)))
    if len(dilation) != 3:
        raise UserError(f"replace_stride_with_dilation needs 3 booleans, got {dilation}")
    if any(dilation) and layout.block is BasicBlock:
        raise UserError(f"{name} has basic blocks, which torchvision cannot dilate: use resnet50 or deeper")
    spec = dataclasses.replace(spec, output_stride=spec.output_stride // 2 ** sum(bool(d) for d in dilation))
    return ResNetTrunk(spec, layout.block, layout.layers, layout.base_width, layout.small_stem, **overrides)


@cache
def parameter_count(name: str) -> int:
    """Number of parameters of the registry entry, counted on the `meta` device (no memory, no init time)."""
    with torch.device("meta"):
        model = build_backbone(name)
    return sum(parameter.numel() for parameter in model.parameters())
