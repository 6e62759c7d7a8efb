"""Train, PreciseBN and evaluate as detectron2 does: SGD without weight decay on norm parameters, BatchNorm
training wherever it is not frozen, linear warm-up from 0.001 and step decay, checkpoints (resumed exactly),
PreciseBN before evaluation. VOC (C4 Faster R-CNN): the test detections in the VOC devkit's results files and,
scored from those files, VOC07 AP (the headline keys) and COCO-style AP; COCO (Mask R-CNN FPN): COCOeval."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.distributed import resolve_device
from vicregl_cli.errors import UserError
from vicregl_cli.interrupts import StopRequest, TrainingInterrupted, resume_command
from vicregl_cli.progress import track
from vicregl_cli.rng_state import set_rng_state
from vicregl_cli.tensorboard import ScalarLog
from vicregl_cli.transfer.tv_detection.checkpoint import CHECKPOINT, load_state, save_state
from vicregl_cli.transfer.tv_detection.coco import COCO_DATASETS
from vicregl_cli.transfer.tv_detection.coco_eval import evaluate_coco
from vicregl_cli.transfer.tv_detection.data import DetectionData, DetectionImages, Sample, train_loader
from vicregl_cli.transfer.tv_detection.datasets import load_data
from vicregl_cli.transfer.tv_detection.geometry import (
    COCO_REFERENCE,
    VOC_REFERENCE,
    Geometry,
    Reference,
    resolve_geometry,
)
from vicregl_cli.transfer.tv_detection.mask_rcnn import build_mask_rcnn
from vicregl_cli.transfer.tv_detection.model import build_model
from vicregl_cli.transfer.tv_detection.settings import DetectionSettings
from vicregl_cli.transfer.voc_eval import (
    ImageDetections,
    ImageTruth,
    read_voc_results,
    voc_detection_metrics,
    write_voc_results,
)

DETECTIONS = "detections"  # VOC: RUN/detections/comp4_det_test_<class>.txt


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
    model: GeneralizedRCNN,
    data: DetectionData,
    settings: DetectionSettings,
    device: torch.device,
    checkpoint: Path,
) -> None:
    """`iters` SGD steps on the sum of the losses, resumed from `checkpoint` when it exists (weights,
    momenta, RNG states and the batch stream's position: the same weights as an uninterrupted run). It is
    written every `checkpoint_every` iterations and at the end; a stop signal (SIGTERM / SIGUSR1 / SIGUSR2 /
    Ctrl-C) finishes the step, writes it, hands the signal on (submitit requeues) and raises
    TrainingInterrupted; a second Ctrl-C stops at once."""
    optimizer = make_optimizer(model, settings)
    start = 0
    state = load_state(checkpoint, settings) if checkpoint.is_file() else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iteration"]
        print(f"detect: resuming {checkpoint} at iteration {start} of {settings.iters}", file=sys.stderr)
    batches = train_loader(data.train, settings, start)  # draws from the global RNG: restore after it
    if state is not None:
        set_rng_state(state["rng"])
    model.train()
    stop = StopRequest()
    stop.install()
    curves = ScalarLog(checkpoint.parent, purge_step=start + 1)  # a resumed run redraws from its checkpoint
    try:
        with track("detect train", settings.iters - start, log_every=settings.log_every) as tracker:
            for iteration in range(start, settings.iters):
                loss = _step(model, optimizer, next(batches), iteration, settings, device)
                lr = optimizer.param_groups[0]["lr"]
                tracker.advance(loss=loss, lr=lr)
                done = iteration + 1
                curves.scalars({"loss": loss, "lr": lr}, done, prefix="train/")
                if stop.signum or done % settings.checkpoint_every == 0 or done == settings.iters:
                    save_state(checkpoint, model, optimizer, done, settings)
                    curves.flush()
                if stop.signum:
                    signum = stop.signum
                    stop.chain()
                    raise TrainingInterrupted(signum, done, checkpoint, resume_command(sys.argv))
    finally:
        curves.close()
        stop.uninstall()


def _step(
    model: GeneralizedRCNN,
    optimizer: torch.optim.Optimizer,
    batch: tuple[list[Tensor], list[dict[str, Tensor]]],
    iteration: int,
    settings: DetectionSettings,
    device: torch.device,
) -> float:
    """One SGD step at the scheduled lr -> the loss; a non-finite loss stops before the weights change."""
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * lr_factor(iteration, settings)
    images, targets = batch
    losses = model([image.to(device) for image in images], [_to(t, device) for t in targets])
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"detection loss is {loss.item()} at iteration {iteration}: {losses}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _to(target: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {key: value.to(device) for key, value in target.items()}


# Not swa_utils.update_bn: it calls model(batch[0]) alone; GeneralizedRCNN's train-mode forward needs targets.
@torch.no_grad()
def precise_bn(
    model: GeneralizedRCNN, data: DetectionData, settings: DetectionSettings, device: torch.device
) -> None:
    """PreciseBN: re-estimate every BatchNorm's statistics as the plain mean over `precise_bn_iters` training
    batches (train-mode forward, no update), as detectron2's hook does before evaluation."""
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
    model: GeneralizedRCNN,
    samples: list[Sample],
    class_names: list[str],
    test_size: int,
    device: torch.device,
    results_dir: Path,
) -> dict[str, float]:
    """Detect on every test image at `test_size` (one at a time, as detectron2 tests), write the detections as
    the devkit's `results_dir/comp4_det_test_<class>.txt`, and score what those files hold (3-decimal scores,
    0.1 px boxes, as detectron2's VOC evaluator scores its own files): VOC07 11-point AP, AP50, AP75 and
    COCO-style coco_AP, coco_AP50, coco_AP75, all in percent."""
    train_sizes = model.transform.min_size
    model.transform.min_size = (test_size,)
    model.eval()
    images = DetectionImages(samples)
    detections = []
    with track("detect eval", len(samples), log_every=max(1, len(samples) // 5)) as tracker:
        for index in range(len(samples)):
            image, _ = images[(index, False)]
            output = model([image.to(device)])[0]
            detections.append(
                ImageDetections(
                    output["boxes"].cpu().numpy(),
                    output["scores"].cpu().numpy(),
                    output["labels"].cpu().numpy() - 1,
                )
            )
            tracker.advance()
    model.transform.min_size = train_sizes
    image_ids = [sample.image_id for sample in samples]
    write_voc_results(results_dir, image_ids, detections, class_names)
    truths = [ImageTruth(sample.boxes, sample.labels, sample.difficult) for sample in samples]
    scored = read_voc_results(results_dir, image_ids, class_names)
    return voc_detection_metrics(scored, truths, len(class_names))


def _precise_bn_iters(settings: DetectionSettings) -> int:
    """PreciseBN batches: at most one per training iteration."""
    return min(settings.precise_bn_iters, settings.iters)


def recorded_params(settings: DetectionSettings, geometry: Geometry) -> dict:
    """A run's params: the settings, the resolved sizes and budgets, lr, steps, warm-up, PreciseBN batches."""
    return {
        **asdict(settings),
        **asdict(geometry),
        "precise_bn_iters": _precise_bn_iters(settings),
        "lr": settings.lr,
        "steps": settings.steps(),
        "warmup": settings.warmup(),
    }


def reference(dataset: str) -> Reference:
    """The benchmark sizes of a dataset: COCO's Mask R-CNN 1x, else VOC's C4."""
    return COCO_REFERENCE if dataset in COCO_DATASETS else VOC_REFERENCE


def check_data(dataset: str, data_root: Path, settings: DetectionSettings) -> Geometry:
    """Check the settings and parse every annotation (unknown classes fail here; nothing trained) -> the
    sizes and budgets resolved against the training images."""
    if settings.iters < 1 or settings.batch_size < 1 or settings.checkpoint_every < 1:
        raise UserError("--iters, --batch-size and --checkpoint-every must be at least 1")
    if settings.frozen and dataset in COCO_DATASETS:
        raise UserError("--frozen is VICRegL Table 9's Linear Det. on VOC; COCO runs Mask R-CNN fine-tuned")
    return resolve_geometry(settings, load_data(dataset, data_root).train, reference(dataset))


def build(
    weights: WeightsRef, dataset: str, data: DetectionData, geometry: Geometry, settings: DetectionSettings
) -> GeneralizedRCNN:
    """The dataset's detector around `weights.build()`: Mask R-CNN FPN on COCO, else the C4 Faster R-CNN
    (`settings.frozen`: Linear Det.), keeping `settings.detections_per_image` detections per test image."""
    if dataset in COCO_DATASETS:
        model = build_mask_rcnn(weights.build(), len(data.class_names), geometry)
    else:
        model = build_model(weights.build(), len(data.class_names), geometry, frozen=settings.frozen)
    model.roi_heads.detections_per_img = settings.detections_per_image
    return model


def run(
    weights: WeightsRef, dataset: str, data_root: Path, settings: DetectionSettings, run_dir: Path
) -> dict[str, float]:
    """Load data, build the model, train (resuming RUN/checkpoint.pth), PreciseBN, evaluate -> metrics (VOC:
    the test detections into RUN/detections). Seeded by settings.seed (heads, RoI sampling); the caller's
    torch RNG state comes back."""
    data = load_data(dataset, data_root)
    geometry = resolve_geometry(settings, data.train, reference(dataset))
    bn_iters = _precise_bn_iters(settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build(weights, dataset, data, geometry, settings)
        device = torch.device(resolve_device(settings.device))
        model.to(device)
        kind = "Mask R-CNN FPN" if dataset in COCO_DATASETS else "C4 Faster R-CNN"
        kind += " (backbone and res5 frozen)" if settings.frozen else ""
        print(
            f"detect: {weights.backbone} {kind}, {len(data.train)} train / {len(data.test)} test, "
            f"{len(data.class_names)} classes; train sizes {geometry.min_sizes[0]}-{geometry.min_sizes[-1]}, "
            f"test {geometry.test_size}, max {geometry.max_size}; per image "
            f"{geometry.rpn_batch_per_image} anchors, {geometry.rois_per_image} RoIs, "
            f"{geometry.proposals_train}/{geometry.proposals_test} proposals"
            + (f" (scaled x{geometry.scale:.3g} for small images)" if geometry.scale != 1.0 else "")
            + f"; batch {settings.batch_size}, lr {settings.lr:g}, {settings.iters} iterations, "
            f"PreciseBN {bn_iters}, on {device}",
            file=sys.stderr,
        )
        run_dir = Path(run_dir)
        train(model, data, settings, device, run_dir / CHECKPOINT)
        precise_bn(model, data, replace(settings, precise_bn_iters=bn_iters), device)
        if dataset in COCO_DATASETS:
            return evaluate_coco(model, data, geometry.test_size, device)
        return evaluate(model, data.test, data.class_names, geometry.test_size, device, run_dir / DETECTIONS)
