"""Patch features of a registry backbone: one stage's map at its native stride (ResNets optionally in the
dilated output-stride-8 form `segment` uses), flattened to (images, patches, channels)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vicregl_cli.backbones import WeightsRef, build_backbone, get_spec
from vicregl_cli.errors import UserError

STAGES = (1, 2, 3, 4)
DILATION = (False, True, True)  # layer3 and layer4 dilated: output stride 8, as segment's ResNet heads


def build_options(backbone: str, dilate: bool) -> dict:
    """The build overrides of the dense form: ResNet dilation when asked (ConvNeXt has none)."""
    if not dilate:
        return {}
    if get_spec(backbone).family != "resnet":
        raise UserError(f"--dilate applies to ResNets; {backbone} is a {get_spec(backbone).family}")
    with torch.device("meta"):  # the registry's own check (basic blocks cannot dilate), without memory
        build_backbone(backbone, replace_stride_with_dilation=DILATION)
    return {"replace_stride_with_dilation": DILATION}


def stage_stride(backbone: str, stage: int, dilate: bool) -> int:
    """Input pixels per feature-map cell of `stage` (1..4): 4, 8, 16, 32 for the ImageNet stem (1, 2, 4, 8 for
    the small-input stem); dilation keeps layer3 and layer4 at layer2's stride."""
    if stage not in STAGES:
        raise UserError(f"--stage must be one of {STAGES} (4 = the last), got {stage}")
    first = get_spec(backbone).output_stride // 8
    strides = [first * 2**index for index in range(4)]
    if dilate:
        strides = [strides[0], strides[1], strides[1], strides[1]]
    return strides[stage - 1]


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the convolution before it (a ResNet block's convN / bnN, a
    downsample's [conv, bn], the stem's conv1 / bn1), in place: the same features, a third less CPU time."""
    for module in list(model.modules()):
        pair = isinstance(module, nn.Sequential) and len(module) == 2
        if pair and isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
        for name, child in list(module.named_children()):
            norm = getattr(module, name.replace("conv", "bn", 1), None) if name.startswith("conv") else None
            if isinstance(child, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(module, name, fuse_conv_bn_eval(child, norm))
                setattr(module, name.replace("conv", "bn", 1), nn.Identity())
    return model


def dense_model(weights: WeightsRef, dilate: bool, device: torch.device) -> nn.Module:
    """The frozen backbone in eval mode on `device`, dilated when asked."""
    model = weights.build(**build_options(weights.backbone, dilate))
    model = model.to(device, memory_format=torch.channels_last)  # 1.5x faster convolutions on CPU
    model.requires_grad_(False)
    return model.eval()


@torch.inference_mode()
def patch_features(model: nn.Module, images: Tensor, stage: int) -> Tensor:
    """(B, h·w, C) features of `stage` (1..4), row-major over the map. ConvNeXt's last stage gets the final
    LayerNorm (the map its pooled representation averages); earlier stages are the raw outputs."""
    maps = model.forward_stages(images.contiguous(memory_format=torch.channels_last))
    feature_map = maps[stage - 1]
    if stage == 4 and model.spec.family == "convnext":
        return model.norm(feature_map.flatten(2).transpose(1, 2))
    return feature_map.flatten(2).transpose(1, 2)
