"""ResNet trunks (no classifier) with torchvision's blocks and key names, widened as in VICReg's Table 7."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from vicregl_cli.backbones.spec import BackboneSpec


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without `avgpool`/`fc`, `base_width` channels after the stem (64; 128 and 256 for
    VICReg's ×2 and ×4, whose every convolution widens with it).

    Keys match torchvision (`conv1`, `bn1`, `layer1..4`): torchvision and VICReg/VICRegL files load unchanged.
    `forward_stages` returns the outputs of layer1..layer4 (strides 4, 8, 16, 32 unless dilated). The
    small-input stem (`small_stem`: a 3 × 3 stride-1 convolution and no max-pool, as CIFAR / STL-scale
    self-supervised work uses) keeps full resolution: strides 1, 2, 4, 8, so a 64 px image gives an 8 × 8 map.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        base_width: int = 64,
        small_stem: bool = False,
        zero_init_residual: bool = True,
        replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
    ) -> None:
        super().__init__()
        self.spec = spec
        stem_width = base_width
        if small_stem:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = stem_width
        self._dilation = 1
        self.layer1 = self._make_layer(block, stem_width, layers[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(block, stem_width * 2, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, stem_width * 4, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, stem_width * 8, layers[3], 2, replace_stride_with_dilation[2])
        self._init_weights(zero_init_residual)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        num_blocks: int,
        stride: int,
        dilate: bool,
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_channels:
            projection = conv1x1(self._inplanes, out_channels, stride)
            downsample = nn.Sequential(projection, nn.BatchNorm2d(out_channels))
        blocks = [block(self._inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self._inplanes = out_channels
        blocks += [block(out_channels, planes, dilation=self._dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's init; zero_init_residual (as VICReg/VICRegL pretrain) zeroes each block's last BN."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of layer1..layer4: (B, widths[i], H / 4·2^i, W / 4·2^i) without dilation."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(last-stage map (B, C, H / stride, W / stride), its spatial mean (B, C))."""
        feature_map = self.forward_stages(x)[-1]
        return feature_map, torch.mean(feature_map, dim=(2, 3))
