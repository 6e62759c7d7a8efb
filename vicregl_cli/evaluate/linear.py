"""Linear evaluation on frozen pooled features (DESIGN §3): SGD momentum 0.9, batch 256, cosine over the
epochs, wd 1e-6, RandomResizedCrop + flip for training, resize 256 / centre 224 for validation; best val
top-1 / top-5. Presets (linear_presets) switch dataset reader and optimiser settings, e.g. VICReg B.3's
Places205 and iNaturalist 2018 transfers with their step schedules.

Two modes: the protocol (one sweep point per learning rate, each reading augmented images through the frozen
backbone), and `--cached`, one point that trains every learning rate's head at once on cached centre-crop
features (a deviation: no augmentation) and records one run per learning rate."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DistributedSampler

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.distributed import compute_device, is_main_process
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.classification import (
    BestAccuracy,
    accuracy_of_linear,
    check_training_options,
    new_head,
    open_datasets,
    shuffled_loader,
    wrap_ddp,
)
from vicregl_cli.evaluate.features import (
    eval_transform,
    extractor_from_config,
    frozen_params,
    train_transform,
    warn_if_small_images,
)
from vicregl_cli.evaluate.linear_presets import DEFAULT_LRS, LrSchedule
from vicregl_cli.progress import track
from vicregl_cli.seeding import seeded
from vicregl_cli.sweep import SweepPoint, point_name
from vicregl_cli.tensorboard import ScalarLog

METRIC = "top1"  # the metric that ranks the runs of a sweep


@dataclass
class TrainedHeads:
    """The cached mode's outcome: best val accuracies per lr, and the final heads (H, K, C), (H, K)."""

    metrics: list[dict[str, float]]
    weight: Tensor
    bias: Tensor


def train_heads_on_features(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    lrs: list[float],
    *,
    num_classes: int,
    epochs: int,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    seed: int = 0,
    schedule: LrSchedule | None = None,
    show_progress: bool = True,
    curves: Sequence[ScalarLog] = (),
) -> TrainedHeads:
    """Train one linear head per learning rate at once: each batch of features feeds every head (one batched
    matmul), each head has its own SGD step (momentum, wd, per-epoch `schedule`, default cosine). Every head
    starts from the same seeded init and sees the same seeded batch order, so head i equals a run with
    lrs[i] alone. `curves` (one per head, optional): its per-epoch loss, lr and val accuracy."""
    schedule = schedule or LrSchedule("cosine", epochs)
    device = train_features.device
    count, width = train_features.shape
    heads = len(lrs)
    init = new_head(width, num_classes, seed)
    weight = init.weight.detach().to(device).repeat(heads, 1, 1).requires_grad_(True)  # (H, K, C)
    bias = init.bias.detach().to(device).repeat(heads, 1).requires_grad_(True)  # (H, K)
    momentum_buffers: list[Tensor | None] = [None, None]
    base_lrs = torch.tensor(lrs, dtype=weight.dtype, device=device)
    best = [BestAccuracy() for _ in lrs]
    steps_per_epoch = math.ceil(count / batch_size)
    with track("linear (cached)", total=epochs * steps_per_epoch, enabled=show_progress) as tracker:
        for epoch in range(epochs):
            lr = base_lrs * schedule.factor(epoch)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch)).to(device)
            loss_sums = torch.zeros(heads, dtype=torch.float64)
            for start in range(0, count, batch_size):
                batch = order[start : start + batch_size]
                logits = torch.baddbmm(
                    bias[:, None, :], train_features[batch].expand(heads, -1, -1), weight.transpose(1, 2)
                )  # (H, B, K)
                losses = F.cross_entropy(
                    logits.flatten(0, 1), train_labels[batch].repeat(heads), reduction="none"
                )
                head_losses = losses.view(heads, -1).mean(dim=1)
                loss_sums += head_losses.detach().double().cpu()
                loss = head_losses.sum()
                weight.grad = bias.grad = None
                loss.backward()
                with torch.no_grad():
                    for slot, (parameter, scale) in enumerate(
                        ((weight, lr[:, None, None]), (bias, lr[:, None]))
                    ):
                        step = parameter.grad + weight_decay * parameter
                        buffer = momentum_buffers[slot]
                        buffer = step.clone() if buffer is None else buffer.mul_(momentum).add_(step)
                        momentum_buffers[slot] = buffer
                        parameter.sub_(scale * buffer)
                tracker.advance(loss=loss.item() / heads, epoch=epoch)
            with torch.no_grad():
                for index in range(heads):
                    top1, top5 = accuracy_of_linear(val_features, val_labels, weight[index], bias[index])
                    best[index].update(top1, top5, epoch)
                    if curves:
                        train = {"loss": float(loss_sums[index]) / steps_per_epoch, "lr": float(lr[index])}
                        curves[index].scalars(train, epoch + 1, prefix="train/")
                        curves[index].scalars({"top1": top1, "top5": top5}, epoch + 1, prefix="val/")
    return TrainedHeads([result.metrics() for result in best], weight.detach(), bias.detach())


@dataclass(frozen=True)
class LinearConfig:
    """Everything `vicregl linear` needs besides the weights; the params record every field but the paths."""

    data: Path
    lrs: tuple[float, ...] = DEFAULT_LRS
    epochs: int = 100
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-6
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    preset: str = "imagenet"
    dataset: str = "imagefolder"  # the reader: imagefolder, places205 or inat18
    train_list: Path | None = None  # places205 only: replaces trainvalsplit_places205/train_places205.csv
    val_list: Path | None = None
    image_size: int = 224
    resize: int = 256
    min_scale: float = 0.08
    cached: bool = False
    num_workers: int = 8
    cache_dir: Path | None = None
    recalibrate_bn: bool | None = None
    bn_batches: int = 100
    seed: int = 0
    device: str | None = None


def schedule_of(config: LinearConfig) -> LrSchedule:
    """The learning-rate schedule the config asks for."""
    return LrSchedule(config.schedule, config.epochs, tuple(config.milestones), config.gamma)


def open_splits(config: LinearConfig, train_view, val_view) -> tuple:
    """The train and val splits in the config's dataset layout, with these transforms."""
    return open_datasets(
        config.data, train_view, val_view, layout=config.dataset, train_list=config.train_list,
        val_list=config.val_list,
    )  # fmt: skip


def plan(config: LinearConfig, weights: WeightsRef) -> list[SweepPoint]:
    """Check options and data (nothing computed): a point per learning rate, or with --cached one point
    whose members are the learning rates. Each point's params spell out its per-epoch learning rates."""
    if not config.lrs or any(lr <= 0 for lr in config.lrs):
        raise UserError(f"--lr needs positive learning rates, got {list(config.lrs)}")
    check_training_options(config.epochs, config.batch_size, {"--lr": list(config.lrs)})
    schedule = schedule_of(config)
    schedule.check()
    eval_transform(config.resize, config.image_size)
    train_set, val_set = open_splits(config, None, None)
    warn_if_small_images("linear", [path for path, _ in train_set.samples], config.image_size, config.resize)
    shared = frozen_params(config, weights, train_set, val_set, swept=("lrs", "train_list", "val_list"))
    protocol = "linear-cached" if config.cached else "linear"
    dataset = f"{config.dataset}:{Path(config.data).resolve()}"
    runs = [
        SweepPoint(point_name("cached" if config.cached else "", lr=lr), protocol,
                   {**shared, "lr": lr, "lr_schedule": schedule.describe(lr)}, weights, dataset, config)
        for lr in config.lrs
    ]  # fmt: skip
    if not config.cached:
        return runs
    return [SweepPoint("cached", protocol, shared, weights, dataset, config, members=tuple(runs))]


def run_point(point: SweepPoint) -> dict:
    """One learning rate of the protocol (metrics), or a --cached point: {member run: metrics}."""
    if point.members:
        return _train_cached(point)
    return _train_one_lr(point)


def _train_one_lr(point: SweepPoint) -> dict[str, float]:
    """Augmented train images through the frozen backbone into one head; val features from the cache (the
    centre-crop view never changes); DDP over the head under torchrun. Seeded, the caller's RNG restored."""
    config: LinearConfig = point.task
    lr = point.params["lr"]
    device = compute_device(config.device)
    eval_view = eval_transform(config.resize, config.image_size)
    augmented = train_transform(config.image_size, config.min_scale)
    train_set, val_set = open_splits(config, augmented, eval_view)
    bn_set = copy.copy(train_set)
    bn_set.transform = eval_view
    extractor = extractor_from_config(config, point.weights, device, bn_set)
    val_features, val_labels = extractor.features(val_set, "val features")
    extractor.prepare()
    backbone = extractor.model
    head = new_head(backbone.spec.representation_size, len(train_set.classes), config.seed).to(device)
    trained_head = wrap_ddp(head, device)
    loader = shuffled_loader(train_set, config.batch_size, config.seed, config.num_workers, device)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_of(config).factor)
    best = BestAccuracy()
    val_features, val_labels = val_features.to(device), val_labels.to(device)
    backbone.eval()
    total = config.epochs * len(loader)
    curves = ScalarLog(point.folder, enabled=is_main_process())
    with seeded(config.seed), track(f"linear lr={lr:g}", total=total, enabled=is_main_process()) as tracker:
        for epoch in range(config.epochs):
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            epoch_lr, losses = scheduler.get_last_lr()[0], []
            for images, labels in loader:
                with torch.no_grad():
                    _, pooled = backbone(images.to(device, non_blocking=True))
                loss = F.cross_entropy(trained_head(pooled), labels.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                tracker.advance(loss=losses[-1], lr=epoch_lr)
            scheduler.step()
            with torch.no_grad():
                top1, top5 = accuracy_of_linear(val_features, val_labels, head.weight, head.bias)
            best.update(top1, top5, epoch)
            curves.scalars({"loss": sum(losses) / len(losses), "lr": epoch_lr}, epoch + 1, prefix="train/")
            curves.scalars({"top1": top1, "top5": top5}, epoch + 1, prefix="val/")
    curves.close()
    return best.metrics()


def _train_cached(point: SweepPoint) -> dict[str, dict[str, float]]:
    """Train the members' learning rates together on cached centre-crop features; metrics per member."""
    config: LinearConfig = point.task
    device = compute_device(config.device)
    eval_view = eval_transform(config.resize, config.image_size)
    train_set, val_set = open_splits(config, eval_view, eval_view)
    extractor = extractor_from_config(config, point.weights, device, train_set)
    train_features, train_labels = extractor.features(train_set, "train features")
    val_features, val_labels = extractor.features(val_set, "val features")
    curves = [ScalarLog(member.folder, enabled=is_main_process()) for member in point.members]
    results = train_heads_on_features(
        train_features.to(device),
        train_labels.to(device),
        val_features.to(device),
        val_labels.to(device),
        [member.params["lr"] for member in point.members],
        num_classes=len(train_set.classes),
        epochs=config.epochs,
        batch_size=config.batch_size,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        seed=config.seed,
        schedule=schedule_of(config),
        show_progress=is_main_process(),
        curves=curves,
    )
    for log in curves:
        log.close()
    return {member.name: metrics for member, metrics in zip(point.members, results.metrics, strict=True)}
