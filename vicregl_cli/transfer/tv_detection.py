"""The embedded detection engine: the Faster R-CNN R50-C4 benchmark (MoCo / DenseCL detectron2 configs)
rebuilt on torchvision, so that `vicregl detect` runs where detectron2 is not installed.

Model: stem..res4 (stride 16) -> RPN (15 anchors: sizes 32-512 x ratios 0.5/1/2) -> RoIAlignV2 14 x 14 ->
res5 + BatchNorm ("extra norm") -> average pool -> class scores + class-specific boxes. BatchNorm trains
everywhere (nothing frozen). detectron2's choices where torchvision differs: L1 box losses (smooth-L1 beta 0),
RPN losses normalised by the sampled-anchor budget, aligned RoIAlign with adaptive sampling, predictor init
std 0.01 / 0.001, no weight decay on norm parameters, linear warm-up from 0.001, PreciseBN before evaluation,
no size padding.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.transforms.functional import pil_to_tensor

from vicregl_cli.errors import UserError
from vicregl_cli.transfer.voc_eval import ImageDetections, ImageTruth, coco_metrics, voc_metrics

PAPER_MIN_SIZES = tuple(range(480, 801, 32))
PAPER_TEST_SIZE = 800
PAPER_MAX_SIZE = 1333
VOC_SHORT_SIDE = 375  # the shorter side of most VOC images (500 x 375)
SMALL_IMAGE_SIDE = 200
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TORCHVISION_DATASETS = ("voc", "voc0712")


@dataclass
class DetectionSettings:
    """The C4 benchmark's hyper-parameters (defaults: VOC07+12, 24k iterations, batch 16); None = auto."""

    iters: int = 24000
    batch_size: int = 16
    base_lr: float | None = None  # None: 0.02 x batch_size / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    step_fractions: tuple[float, float] = (18000 / 24000, 22000 / 24000)
    min_sizes: tuple[int, ...] | None = None
    test_size: int | None = None
    max_size: int | None = None
    rpn_batch_per_image: int | None = None
    rois_per_image: int | None = None
    proposals_train: int | None = None
    proposals_test: int | None = None
    precise_bn_iters: int = 200
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    log_every: int = 20

    @property
    def lr(self) -> float:
        return 0.02 * self.batch_size / 16 if self.base_lr is None else self.base_lr

    def steps(self) -> tuple[int, ...]:
        return tuple(round(fraction * self.iters) for fraction in self.step_fractions)

    def warmup(self) -> int:
        """The warm-up length: 100 iterations, capped at a tenth of a shortened schedule."""
        return min(self.warmup_iters, max(1, self.iters // 10))


@dataclass
class Sample:
    """One image of a split: its file and its parsed annotation."""

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class DetectionData:
    """Train and test samples plus the class names (labels index them; the model adds background as 0)."""

    train: list[Sample]
    test: list[Sample]
    class_names: list[str]


def check_voc_root(root: Path) -> Path:
    """A VOC-layout folder must hold Annotations/ and ImageSets/Main/ (and JPEGImages/)."""
    root = Path(root).expanduser()
    missing = [sub for sub in ("Annotations", "ImageSets/Main", "JPEGImages") if not (root / sub).is_dir()]
    if missing:
        nested = (
            sorted(p.name for p in root.glob("*") if (p / "Annotations").is_dir()) if root.is_dir() else []
        )
        hint = f"; did you mean {root / nested[0]}?" if nested else ""
        raise UserError(f"{root} is not a VOC-layout folder: it lacks {', '.join(missing)}{hint}")
    return root


def read_voc_split(voc_root: Path, split: str, class_names: list[str]) -> list[Sample]:
    """Parse every annotation of ImageSets/Main/<split>.txt up front (unknown class names fail here)."""
    from vicregl_cli.data.readers import parse_voc_xml, read_split

    samples = []
    for image_id in read_split(voc_root, "Main", split):
        annotation = parse_voc_xml(voc_root / "Annotations" / f"{image_id}.xml", class_names)
        image_path = voc_root / "JPEGImages" / annotation.filename
        if not image_path.is_file():
            raise UserError(f"image {image_path} (named by {image_id}.xml) does not exist")
        samples.append(
            Sample(
                image_path,
                annotation.width,
                annotation.height,
                annotation.boxes,
                annotation.labels,
                annotation.difficult,
            )
        )
    return samples


def load_data(dataset: str, data_root: Path) -> DetectionData:
    """`voc`: one VOC folder, train -> val; `voc0712`: VOCdevkit, VOC2007+2012 trainval -> VOC2007 test."""
    from vicregl_cli.data.readers import VOC_CLASSES, voc_class_names

    if dataset not in TORCHVISION_DATASETS:
        raise UserError(
            f"dataset {dataset!r} runs on detectron2 only (Mask R-CNN); the torchvision engine takes "
            f"{list(TORCHVISION_DATASETS)}"
        )
    data_root = Path(data_root).expanduser()
    if dataset == "voc":
        root = check_voc_root(data_root)
        names = voc_class_names(root)
        train, test = read_voc_split(root, "train", names), read_voc_split(root, "val", names)
    else:
        roots = {year: check_voc_root(data_root / f"VOC{year}") for year in ("2007", "2012")}
        names = list(VOC_CLASSES)
        train = read_voc_split(roots["2007"], "trainval", names) + read_voc_split(
            roots["2012"], "trainval", names
        )
        test = read_voc_split(roots["2007"], "test", names)
    train = [sample for sample in train if len(sample.labels)]  # detectron2 drops images without objects
    if not train:
        raise UserError(f"no training image of {data_root} has an object")
    return DetectionData(train=train, test=test, class_names=names)


@dataclass(frozen=True)
class Geometry:
    """Image sizes and per-image budgets after resolving the `None` (auto) settings."""

    min_sizes: tuple[int, ...]
    test_size: int
    max_size: int
    rpn_batch_per_image: int
    rois_per_image: int
    proposals_train: int
    proposals_test: int
    scale: float


def resolve_geometry(settings: DetectionSettings, samples: list[Sample]) -> Geometry:
    """Fill the unset sizes and budgets. Real photos get the paper's values (train 480-800 step 32, test 800,
    max 1333; 256 RPN anchors and 512 RoIs sampled per image; 2000 / 1000 proposals kept in training / test).
    Images whose median shorter side is under 200 px (the synthetic set) get the sizes scaled by shorter
    side / 375 (the upsampling VOC's 500 x 375 images get) and the per-image budgets by its square."""
    short = float(np.median([min(sample.width, sample.height) for sample in samples]))
    scale = short / VOC_SHORT_SIDE if short < SMALL_IMAGE_SIDE else 1.0

    def budget(value: int | None, paper: int) -> int:
        return value if value is not None else max(1, round(paper * scale * scale))

    return Geometry(
        min_sizes=tuple(settings.min_sizes or (round(size * scale) for size in PAPER_MIN_SIZES)),
        test_size=settings.test_size or round(PAPER_TEST_SIZE * scale),
        max_size=settings.max_size or round(PAPER_MAX_SIZE * scale),
        rpn_batch_per_image=budget(settings.rpn_batch_per_image, 256),
        rois_per_image=budget(settings.rois_per_image, 512),
        proposals_train=budget(settings.proposals_train, 2000),
        proposals_test=budget(settings.proposals_test, 1000),
        scale=scale,
    )


class RoIAlignV2(MultiScaleRoIAlign):
    """detectron2's ROIAlignV2 on one feature map: aligned (half-pixel) RoIAlign, adaptive sampling."""

    def __init__(self, output_size: int, stride: int) -> None:
        super().__init__(["0"], output_size, sampling_ratio=0)
        self.stride = stride

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        return roi_align(x["0"], boxes, self.output_size, 1.0 / self.stride, sampling_ratio=0, aligned=True)


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

    def forward(self, features, proposals, image_shapes, targets=None):
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


def build_model(backbone: nn.Module, num_classes: int, geometry: Geometry) -> GeneralizedRCNN:
    """The C4 Faster R-CNN around a registry ResNet (its layer4 becomes the box head)."""
    if getattr(backbone, "spec", None) is None or backbone.spec.family != "resnet":
        family = getattr(getattr(backbone, "spec", None), "family", type(backbone).__name__)
        raise UserError(
            f"the Faster R-CNN C4 protocol needs a ResNet backbone (res4 trunk + res5 head), not {family}"
        )
    trunk, head = C4Trunk(backbone), Res5ExtraNormHead(backbone)
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


class DetectionImages(torch.utils.data.Dataset):
    """Items addressed by (index, flip): RGB float image in [0, 1] and the torchvision target (labels + 1)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[Tensor, dict[str, Tensor]]:
        index, flip = item
        sample = self.samples[index]
        with Image.open(sample.image_path) as image:
            pixels = pil_to_tensor(image.convert("RGB")).float() / 255.0
        boxes = torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)
        if flip:
            pixels = pixels.flip(-1)
            boxes = torch.stack(
                [pixels.shape[-1] - boxes[:, 2], boxes[:, 1], pixels.shape[-1] - boxes[:, 0], boxes[:, 3]],
                dim=1,
            )
        labels = torch.as_tensor(sample.labels, dtype=torch.int64) + 1
        return pixels, {"boxes": boxes, "labels": labels}


class AspectGroupedBatches:
    """detectron2's training stream: an endless seeded shuffle, images grouped into batches of one orientation
    (landscape or portrait), each image flipped horizontally with probability 0.5."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int) -> None:
        self.landscape = [sample.width > sample.height for sample in samples]
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        buckets: dict[bool, list[tuple[int, bool]]] = {True: [], False: []}
        while True:
            order = torch.randperm(len(self.landscape), generator=self.generator).tolist()
            flips = (torch.rand(len(order), generator=self.generator) < 0.5).tolist()
            for index, flip in zip(order, flips, strict=True):
                bucket = buckets[self.landscape[index]]
                bucket.append((index, flip))
                if len(bucket) == self.batch_size:
                    yield list(bucket)
                    bucket.clear()


def collate(batch: list) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    return [image for image, _ in batch], [target for _, target in batch]


def train_loader(samples: list[Sample], settings: DetectionSettings) -> Iterator:
    loader = torch.utils.data.DataLoader(
        DetectionImages(samples),
        batch_sampler=AspectGroupedBatches(samples, settings.batch_size, settings.seed),
        num_workers=settings.workers,
        collate_fn=collate,
        persistent_workers=settings.workers > 0,
    )
    return iter(loader)


def make_optimizer(model: nn.Module, settings: DetectionSettings) -> torch.optim.SGD:
    """SGD with momentum; weight decay on every parameter but those of norm layers (detectron2's default)."""
    norm_params = {
        id(param)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for param in module.parameters(recurse=False)
    }
    params = [param for param in model.parameters() if param.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in norm_params], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if id(p) in norm_params], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)


def lr_factor(iteration: int, settings: DetectionSettings) -> float:
    """detectron2's WarmupMultiStepLR: linear warm-up from warmup_factor, then x0.1 at each step."""
    decay = 0.1 ** sum(iteration >= step for step in settings.steps())
    warmup = settings.warmup()
    if iteration >= warmup:
        return decay
    alpha = iteration / warmup
    return decay * (settings.warmup_factor * (1 - alpha) + alpha)


def train(
    model: GeneralizedRCNN, data: DetectionData, settings: DetectionSettings, device: torch.device
) -> None:
    """The training loop: `iters` SGD steps on the sum of the four losses."""
    from vicregl_cli.progress import track

    optimizer = make_optimizer(model, settings)
    batches = train_loader(data.train, settings)
    model.train()
    with track("detect train", settings.iters, log_every=settings.log_every) as tracker:
        for iteration in range(settings.iters):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * lr_factor(iteration, settings)
            images, targets = next(batches)
            losses = model([image.to(device) for image in images], [_to(t, device) for t in targets])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"detection loss is {loss.item()} at iteration {iteration}: {losses}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.advance(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])


def _to(target: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {key: value.to(device) for key, value in target.items()}


@torch.no_grad()
@torch.no_grad()
def precise_bn(
    model: GeneralizedRCNN, data: DetectionData, settings: DetectionSettings, device: torch.device
) -> None:
    """PreciseBN: re-estimate every BatchNorm's statistics as the plain mean over `precise_bn_iters` training
    batches (train-mode forward, no update), as detectron2's hook does before evaluation."""
    from vicregl_cli.progress import track

    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if settings.precise_bn_iters <= 0 or not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    batches = train_loader(data.train, replace(settings, seed=settings.seed + 1))
    model.train()
    iterations = settings.precise_bn_iters
    with track("PreciseBN", iterations, log_every=max(1, iterations // 5)) as tracker:
        for _ in range(settings.precise_bn_iters):
            images, targets = next(batches)
            model([image.to(device) for image in images], [_to(t, device) for t in targets])
            tracker.advance()
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


@torch.no_grad()
def evaluate(
    model: GeneralizedRCNN, samples: list[Sample], num_classes: int, test_size: int, device: torch.device
) -> dict[str, float]:
    """Detect on every test image at `test_size` (one at a time, as detectron2 tests); COCO-style AP, AP50,
    AP75 and the VOC07 11-point AP, AP50, AP75 (detectron2's VOC evaluator), all in percent."""
    from vicregl_cli.progress import track

    train_sizes = model.transform.min_size
    model.transform.min_size = (test_size,)
    model.eval()
    images = DetectionImages(samples)
    detections, truths = [], []
    with track("detect eval", len(samples), log_every=max(1, len(samples) // 5)) as tracker:
        for index, sample in enumerate(samples):
            image, _ = images[(index, False)]
            output = model([image.to(device)])[0]
            detections.append(
                ImageDetections(
                    output["boxes"].cpu().numpy(),
                    output["scores"].cpu().numpy(),
                    output["labels"].cpu().numpy() - 1,
                )
            )
            truths.append(ImageTruth(sample.boxes, sample.labels, sample.difficult))
            tracker.advance()
    model.transform.min_size = train_sizes
    metrics = coco_metrics(detections, truths)
    voc07 = voc_metrics(detections, truths, num_classes, use_07_metric=True)
    metrics.update({f"{name}_voc07": value for name, value in voc07.items()})
    return metrics


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def run(
    backbone_name: str | None,
    weights: Path | None,
    dataset: str,
    data_root: Path,
    settings: DetectionSettings,
) -> tuple[dict[str, float], dict]:
    """Load data and backbone (all checks first), train, PreciseBN, evaluate -> (metrics, resolved params)."""
    from vicregl_cli.backbones import load_backbone

    if settings.iters < 1 or settings.batch_size < 1:
        raise UserError("--iters and --batch-size must be at least 1")
    data = load_data(dataset, data_root)
    torch.manual_seed(settings.seed)
    backbone = load_backbone(backbone_name, weights)
    geometry = resolve_geometry(settings, data.train)
    model = build_model(backbone, len(data.class_names), geometry)
    device = pick_device(settings.device)
    model.to(device)
    bn_iters = min(settings.precise_bn_iters, settings.iters)
    print(
        f"detect: {backbone.spec.name} C4 Faster R-CNN, {len(data.train)} train / {len(data.test)} test, "
        f"{len(data.class_names)} classes; train sizes {geometry.min_sizes[0]}-{geometry.min_sizes[-1]}, "
        f"test {geometry.test_size}, max {geometry.max_size}; per image "
        f"{geometry.rpn_batch_per_image} anchors, {geometry.rois_per_image} RoIs, "
        f"{geometry.proposals_train}/{geometry.proposals_test} proposals"
        + (f" (scaled x{geometry.scale:.3g} for small images)" if geometry.scale != 1.0 else "")
        + f"; batch {settings.batch_size}, lr {settings.lr:g}, {settings.iters} iterations, "
        f"PreciseBN {bn_iters}, on {device}",
        file=sys.stderr,
    )
    train(model, data, settings, device)
    precise_bn(model, data, replace(settings, precise_bn_iters=bn_iters), device)
    metrics = evaluate(model, data.test, len(data.class_names), geometry.test_size, device)
    params = {
        **asdict(settings),
        **asdict(geometry),
        "precise_bn_iters": bn_iters,
        "lr": settings.lr,
        "steps": settings.steps(),
        "warmup": settings.warmup(),
        "engine": "torchvision",
    }
    return metrics, {"backbone": backbone.spec.name, **params}


def run_point(point, run_dir: Path) -> dict:
    """One sweep point (vicregl_cli.sweep): params hold backbone, weights, dataset, data_root, settings."""
    from vicregl_cli.report import make_result

    params = dict(point.params)
    settings = DetectionSettings(**params["settings"])
    started = time.perf_counter()
    weights = Path(params["weights"]) if params["weights"] else None
    metrics, resolved = run(
        params["backbone"], weights, params["dataset"], Path(params["data_root"]), settings
    )
    return make_result(
        protocol="detect-faster-rcnn-c4",
        backbone=resolved.pop("backbone"),
        weights=weights,
        dataset=f"{params['dataset']}:{Path(params['data_root']).resolve()}",
        params=resolved,
        metrics={name: value for name, value in metrics.items() if math.isfinite(value)},
        wall_time_s=time.perf_counter() - started,
    )
