"""The Faster R-CNN R50-C4 model of the MoCo / DenseCL detectron2 configs, rebuilt on torchvision.

stem..res4 (stride 16) -> RPN (15 anchors: sizes 32-512 x ratios 0.5/1/2) -> RoIAlignV2 14 x 14 -> res5 +
BatchNorm ("extra norm") -> average pool -> class scores + class-specific boxes. detectron2's choices where
torchvision differs: L1 box losses (smooth-L1 beta 0), RPN losses normalised by the sampled-anchor budget,
aligned RoIAlign with adaptive sampling, predictor init std 0.01 / 0.001, no size padding. `frozen` (VICRegL
Table 9's Linear Det.): stem..res4 and the res5 head frozen as detectron2 freezes blocks (no gradient,
BatchNorm -> FrozenBatchNorm2d with the same statistics); the RPN, the extra norm and the predictor train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align

from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.errors import UserError
from vicregl_cli.transfer.tv_detection.geometry import Geometry


class RoIAlignV2(MultiScaleRoIAlign):
    """detectron2's ROIAlignV2 on one feature map: aligned (half-pixel) RoIAlign, adaptive sampling."""

    def __init__(self, output_size: int, stride: int) -> None:
        super().__init__(["0"], output_size, sampling_ratio=0)
        self.stride = stride

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        return roi_align(x["0"], boxes, self.output_size, 1.0 / self.stride, sampling_ratio=0, aligned=True)


def freeze(module: nn.Module) -> nn.Module:
    """detectron2's `CNNBlockBase.freeze()`: no parameter takes a gradient and every BatchNorm becomes a
    FrozenBatchNorm2d holding its weight, bias and running statistics (eval-mode BatchNorm forever)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buffer).copy_(getattr(child, buffer).detach())
            setattr(module, name, frozen)
        else:
            freeze(child)
    module.requires_grad_(False)
    return module


class C4Trunk(nn.Module):
    """A registry ResNet's stem .. layer3 (stride 16); `out_channels` is what the RPN and the pooler see."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3
        )
        self.out_channels = resnet.spec.stage_widths[2]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Res5ExtraNormHead(nn.Module):
    """layer4 (res5) on each pooled region, then the benchmark's extra BatchNorm, then the spatial mean."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.res5 = resnet.layer4
        self.norm = nn.BatchNorm2d(resnet.spec.stage_widths[3])

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.res5(x)).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """Class scores (background = 0) and class-specific box deltas, initialised as detectron2's predictor."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class DetectronRPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's loss: BCE and L1 sums over the sampled anchors, divided by the
    anchor budget (batch_size_per_image x images)."""

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        positives, negatives = self.fg_bg_sampler(labels)
        positive_index = torch.where(torch.cat(positives))[0]
        sampled_index = torch.cat([positive_index, torch.where(torch.cat(negatives))[0]])
        normaliser = self.fg_bg_sampler.batch_size_per_image * len(labels)
        all_labels, all_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = (
            F.l1_loss(pred_bbox_deltas[positive_index], all_targets[positive_index], reduction="sum")
            / normaliser
        )
        objectness_loss = (
            F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled_index], all_labels[sampled_index], reduction="sum"
            )
            / normaliser
        )
        return objectness_loss, box_loss


class DetectronBoxHeads(RoIHeads):
    """torchvision's box RoIHeads (no masks) with detectron2's loss: mean cross-entropy and the L1 of the
    ground-truth class's deltas over foreground RoIs, divided by the number of sampled RoIs."""

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: sample RoIs against the targets, return ([], losses); test: (detections, {})."""
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if not self.training:
            boxes, scores, classes = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            return [
                {"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, classes, strict=True)
            ], {}
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        foreground = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(labels.numel(), -1, 4)[foreground, labels[foreground]]
        box_loss = F.l1_loss(deltas, regression_targets[foreground], reduction="sum") / max(labels.numel(), 1)
        return [], {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_box_reg": box_loss}


def check_resnet(backbone: nn.Module) -> None:
    """The R-CNN builders take a registry ResNet (stage widths from its spec)."""
    if getattr(backbone, "spec", None) is None or backbone.spec.family != "resnet":
        family = getattr(getattr(backbone, "spec", None), "family", type(backbone).__name__)
        raise UserError(
            f"the Faster / Mask R-CNN protocols need a ResNet backbone (res4 trunk + res5 head), not {family}"
        )


def build_model(
    backbone: nn.Module, num_classes: int, geometry: Geometry, frozen: bool = False
) -> GeneralizedRCNN:
    """The C4 Faster R-CNN around a registry ResNet (its layer4 becomes the box head); `frozen` freezes the
    trunk and res5 (Linear Det.)."""
    check_resnet(backbone)
    trunk, head = C4Trunk(backbone), Res5ExtraNormHead(backbone)
    if frozen:
        freeze(trunk)
        freeze(head.res5)
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    rpn = DetectronRPN(
        anchors,
        RPNHead(trunk.out_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=geometry.rpn_batch_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 6 * geometry.proposals_train, "testing": 6 * geometry.proposals_test},
        post_nms_top_n={"training": geometry.proposals_train, "testing": geometry.proposals_test},
        nms_thresh=0.7,
    )
    roi_heads = DetectronBoxHeads(
        RoIAlignV2(14, stride=16),
        head,
        BoxPredictor(backbone.spec.stage_widths[3], num_classes),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=geometry.rois_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
    )
    transform = GeneralizedRCNNTransform(
        geometry.min_sizes, geometry.max_size, IMAGENET_MEAN, IMAGENET_STD, size_divisible=1
    )
    return GeneralizedRCNN(trunk, rpn, roi_heads, transform)
