"""Mask R-CNN R50-FPN (detectron2's `mask_rcnn_R_50_FPN_1x` with norm in FPN and heads, the DenseCL / VICRegL
COCO benchmark) on torchvision's MaskRCNN around a registry ResNet: FPN on its four stages (+ max-pool P6),
4conv1fc box head and 4conv mask head with BatchNorm (torchvision's `maskrcnn_resnet50_fpn_v2` heads),
one-conv RPN head, 15 anchors per location over five levels. Losses are torchvision's (see docs/detect.md)."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.transfer.tv_detection.geometry import Geometry
from vicregl_cli.transfer.tv_detection.model import check_resnet

FPN_CHANNELS = 256
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one per level, P2..P6
STAGES = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


def build_mask_rcnn(backbone: nn.Module, num_classes: int, geometry: Geometry) -> MaskRCNN:
    """Mask R-CNN R50-FPN around a registry ResNet, every part trained (FREEZE_AT 0), sizes and budgets from
    `geometry` (pre-NMS top-k per level: 2 x proposals_train in training, proposals_test in test)."""
    check_resnet(backbone)
    body = BackboneWithFPN(
        backbone,
        return_layers=STAGES,
        in_channels_list=list(backbone.spec.stage_widths),
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=nn.BatchNorm2d,
    )
    levels = len(ANCHOR_SIZES)
    anchors = AnchorGenerator(tuple((size,) for size in ANCHOR_SIZES), ((0.5, 1.0, 2.0),) * levels)
    return MaskRCNN(
        body,
        num_classes=num_classes + 1,
        min_size=geometry.min_sizes,
        max_size=geometry.max_size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(FPN_CHANNELS, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=2 * geometry.proposals_train,
        rpn_pre_nms_top_n_test=geometry.proposals_test,
        rpn_post_nms_top_n_train=geometry.proposals_train,
        rpn_post_nms_top_n_test=geometry.proposals_test,
        rpn_batch_size_per_image=geometry.rpn_batch_per_image,
        box_batch_size_per_image=geometry.rois_per_image,
        box_head=FastRCNNConvFCHead((FPN_CHANNELS, 7, 7), [FPN_CHANNELS] * 4, [1024], nn.BatchNorm2d),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, [FPN_CHANNELS] * 4, 1, norm_layer=nn.BatchNorm2d),
    )
