"""Our backbones, the linear segmentation head, a per-class IoU metric and a weight check, registered into
mmsegmentation's registries (exported configs reach them through `custom_imports` of this module), and the
Runner hook that shows a run's progress."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path

import torch
from torch import Tensor, nn

from vicregl_cli.backbones import build_backbone, get_spec
from vicregl_cli.distributed import is_main_process
from vicregl_cli.errors import UserError, key_list
from vicregl_cli.progress import track
from vicregl_cli.transfer.mmseg_shims import apply_mmcv_ops_standin

apply_mmcv_ops_standin()

from mmcv.cnn import build_norm_layer  # noqa: E402 - mmseg needs the mmcv.ops stand-in before it imports
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.model import BaseModule, is_model_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import HOOKS, METRICS, MODELS  # noqa: E402

OUTPUT_STRIDE_8_DILATIONS = (1, 1, 2, 4)


def dilate_resnet(trunk: nn.Module, dilations: tuple[int, int, int, int] = OUTPUT_STRIDE_8_DILATIONS) -> None:
    """In place: every stage with dilation d > 1 gets stride 1 and 3 x 3 convolutions dilated by d (its first
    block by d / 2), as mmseg's ResNet(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True)
    does: output stride 8."""
    for index, dilation in enumerate(dilations):
        if dilation == 1:
            continue
        for block_index, block in enumerate(getattr(trunk, f"layer{index + 1}")):
            block_dilation = dilation // 2 if block_index == 0 else dilation
            strided = block.conv2 if hasattr(block, "conv3") else block.conv1
            strided.stride = (1, 1)
            strided.dilation = (block_dilation, block_dilation)
            strided.padding = (block_dilation, block_dilation)
            block.stride = 1
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    trunk.spec = dataclasses.replace(trunk.spec, output_stride=32 // 2 ** sum(d > 1 for d in dilations))


@MODELS.register_module()
class VICRegLBackbone(BaseModule):
    """A registry backbone as an mmseg backbone: returns its 4 stage maps; state-dict keys are the registry's
    own (`backbone.` + the bare keys load it). `frozen`: no gradients, norm layers always in eval mode."""

    def __init__(
        self,
        name: str,
        output_stride: int = 32,
        frozen: bool = False,
        options: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg)
        spec = get_spec(name)
        trunk = build_backbone(name, **(options or {}))
        if output_stride == 8 and spec.output_stride == 32:
            if spec.family != "resnet":
                raise UserError(f"output stride 8 (dilation) is for ResNets; {name} is a {spec.family}")
            dilate_resnet(trunk)
        elif output_stride != spec.output_stride:
            raise UserError(
                f"output_stride {output_stride}: {name} gives {spec.output_stride} (8 by dilating a ResNet)"
            )
        for child_name, child in trunk.named_children():
            self.add_module(child_name, child)
        for parameter_name, parameter in trunk.named_parameters(recurse=False):
            self.register_parameter(parameter_name, parameter)
        for buffer_name, buffer in trunk.named_buffers(recurse=False):
            self.register_buffer(buffer_name, buffer)
        self.spec = trunk.spec
        self._forward_stages = trunk.forward_stages
        self.frozen = frozen
        if frozen:
            for parameter in self.parameters():
                parameter.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> VICRegLBackbone:
        """A frozen backbone stays in eval mode (batch-norm running statistics are never updated)."""
        return super().train(mode and not self.frozen)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return tuple(self._forward_stages(x))


@MODELS.register_module()
class LinearSegHead(BaseDecodeHead):
    """The linear protocol's head (VICRegL appendix D.2): BatchNorm + 1 x 1 convolution on one stage map, or
    on the stage maps resized (bilinear) to the first one's size and concatenated (`resize_concat`); mmseg
    upsamples the logits bilinearly to the label size. Every other argument (dropout_ratio, ...) is
    BaseDecodeHead's, so `--cfg-options model.decode_head.<name>=...` overrides it."""

    def __init__(
        self,
        in_channels: int | list[int],
        channels: int | None = None,
        norm_cfg: dict | None = None,
        **kwargs,
    ) -> None:
        total = sum(in_channels) if isinstance(in_channels, (list, tuple)) else in_channels
        if channels not in (None, total):
            raise UserError(
                f"LinearSegHead has no projection: channels must be {total} (its input width), not {channels}"
            )
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type="BN", requires_grad=True)
        super().__init__(in_channels, total, norm_cfg=norm_cfg, **kwargs)
        self.bn = build_norm_layer(norm_cfg, total)[1]

    def forward(self, inputs: tuple[Tensor, ...]) -> Tensor:
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """mmseg's IoUMetric plus `IoU.<class>` (percent) for each class in the ground truth or predictions."""

    default_prefix = ""  # metric names stay `mIoU`, `aAcc`, ... (mmseg's own names)

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        if not results:
            return metrics
        intersection = sum(result[0] for result in results).double()
        union = sum(result[1] for result in results).double()
        for class_name, class_intersection, class_union in zip(
            self.dataset_meta["classes"], intersection.tolist(), union.tolist(), strict=True
        ):
            if class_union > 0:
                metrics[f"IoU.{class_name}"] = round(100.0 * class_intersection / class_union, 2)
        return metrics


def check_backbone_loaded(backbone: nn.Module, expected: dict[str, Tensor], source: str) -> None:
    """UserError unless every backbone tensor (parameters and buffers) exists in `expected` and equals it:
    mmengine only logs missing keys and keeps random weights, which must never pass silently."""
    actual = backbone.state_dict()
    missing = [key for key in actual if key not in expected]
    unexpected = [key for key in expected if key not in actual]
    different = [
        key
        for key, value in actual.items()
        if key in expected and not torch.equal(value.cpu(), expected[key])
    ]
    problems = []
    if missing:
        problems.append(f"backbone keys missing from the file: {key_list(missing)}")
    if unexpected:
        problems.append(f"keys the backbone does not have: {key_list(unexpected)}")
    if different:
        problems.append(f"tensors that differ from the file after loading: {key_list(different)}")
    if problems:
        raise UserError(f"mmseg did not load the backbone weights of {source}: " + "; ".join(problems))


def read_prefixed_backbone(path: str, prefix: str = "backbone.") -> dict[str, Tensor]:
    """The `prefix`ed tensors of an exported weights file, prefix removed."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


@HOOKS.register_module()
class BackboneWeightsCheckHook(Hook):
    """Before training starts from iteration 0, every backbone tensor must equal the exported weights file."""

    priority = "VERY_HIGH"

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint

    def before_train(self, runner) -> None:
        if runner.iter != 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_backbone_loaded(model.backbone, read_prefixed_backbone(self.checkpoint), self.checkpoint)


def check_exported_config(config_path: Path, state: dict[str, Tensor], source: str) -> None:
    """Build the model of an exported config as mmseg does (init_weights reads the weights file `source`)
    and check that its backbone holds exactly `state` (else a UserError naming the keys)."""
    cfg = Config.fromfile(str(config_path))
    # A logger of its own, made the current one: init_weights logs every tensor at INFO and writes to the
    # current logger's file handlers, which belong to (and are closed with) an earlier point's Runner.
    MMLogger.get_instance(f"vicregl-export-{uuid.uuid4().hex}", log_level=logging.WARNING)
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg.model)
    model.init_weights()
    check_backbone_loaded(model.backbone, state, source)


class ProgressHook(Hook):
    """Shows training and validation through vicregl's progress display; keeps the last validation metrics."""

    priority = "LOW"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self._open = None

    def _start(self, description: str, total: int) -> None:
        self.close()
        self._open = track(description, total, log_every=50, enabled=is_main_process())
        self._tracker = self._open.__enter__()

    def close(self) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None

    def before_train(self, runner) -> None:
        self._start("segment train", runner.max_iters - runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        lr = runner.optim_wrapper.get_lr()["lr"][0]
        self._tracker.advance(loss=float(outputs["loss"].detach()), lr=float(lr))

    def before_val_epoch(self, runner) -> None:
        self._start("segment val", len(runner.val_dataloader))

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._tracker.advance()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = {name: float(value) for name, value in (metrics or {}).items()}
        self.close()
        if runner.iter < runner.max_iters:
            self._start("segment train", runner.max_iters - runner.iter)

    def after_train(self, runner) -> None:
        self.close()
