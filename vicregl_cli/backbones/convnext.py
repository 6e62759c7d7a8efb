"""ConvNeXt trunks (no classifier) with the official module and parameter names, as VICRegL pretrains them."""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerNorm2d
from torch import Tensor, nn

from vicregl_cli.backbones.spec import BackboneSpec

LAYER_NORM_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """dwconv 7×7 -> LayerNorm -> Linear 4× -> GELU -> Linear (-> gamma if layer scale) -> drop path, skip."""

    def __init__(self, dim: int, drop_path: float, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value))
        else:
            self.register_parameter("gamma", None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        residual = self.dwconv(x).permute(0, 2, 3, 1)
        residual = self.pwconv2(self.act(self.pwconv1(self.norm(residual))))
        if self.gamma is not None:
            residual = self.gamma * residual
        return x + self.drop_path(residual.permute(0, 3, 1, 2))


class ConvNeXtTrunk(nn.Module):
    """ConvNeXt without the classifier head; keys `downsample_layers.*`, `stages.S.B.*`, `norm` as released.

    `forward` returns the last stage after the final LayerNorm applied at every location, and the mean of that
    normed map over locations (the VICRegL convention, rather than the classifier's norm-after-pooling).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        depths: tuple[int, int, int, int],
        drop_path_rate: float = 0.1,
        layer_scale_init_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        dims = spec.stage_widths
        stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], LAYER_NORM_EPS))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            norm_then_conv = [LayerNorm2d(dims[i], LAYER_NORM_EPS), nn.Conv2d(dims[i], dims[i + 1], 2, 2)]
            self.downsample_layers.append(nn.Sequential(*norm_then_conv))
        drop_rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        first_block = 0
        for dim, depth in zip(dims, depths, strict=True):
            rates = drop_rates[first_block : first_block + depth]
            blocks = [ConvNeXtBlock(dim, rate, layer_scale_init_value) for rate in rates]
            self.stages.append(nn.Sequential(*blocks))
            first_block += depth
        self.norm = nn.LayerNorm(dims[-1], eps=LAYER_NORM_EPS)
        self.apply(_init_weights)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The raw outputs of stages 0..3 (strides 4, 8, 16, 32), all BEFORE the final `norm`.

        So the last map is not `forward`'s `feature_map`, which is `norm` applied to it at every location.
        """
        stages = []
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
            stages.append(x)
        return stages

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(final-norm last-stage map (B, C, H/32, W/32), its mean over locations (B, C))."""
        last = self.forward_stages(x)[-1]
        feature_map = self.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return feature_map, torch.mean(feature_map, dim=(2, 3))


def _init_weights(module: nn.Module) -> None:
    """The official init: truncated normal (std 0.02) for conv and linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
