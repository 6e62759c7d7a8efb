"""Linear evaluation on frozen pooled features (DESIGN §3): SGD momentum 0.9, batch 256, cosine over the
epochs, wd 1e-6, RandomResizedCrop + flip for training, resize 256 / centre 224 for validation; best val
top-1 / top-5.

Two modes: the protocol (one sweep point per learning rate, each reading augmented images through the frozen
backbone), and `--cached`, which trains every learning rate's head at once on cached centre-crop features."""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from vicregl_cli.errors import UserError
from vicregl_cli.progress import track
from vicregl_cli.sweep import SlurmOptions, SweepPoint, point_name, run_sweep

DEFAULT_LRS = [30.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01]
HEAD_INIT_STD = 0.01


def topk_correct(logits: Tensor, labels: Tensor) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) of a batch of logits; top-5 is top-min(5, classes)."""
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def cosine_factor(epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of epoch `epoch` (0-based) under per-epoch cosine decay to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def new_head(width: int, num_classes: int, seed: int) -> nn.Linear:
    """The linear classifier, initialised as VICReg's evaluation: weights N(0, 0.01²), zero bias (seeded)."""
    head = nn.Linear(width, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * HEAD_INIT_STD)
        head.bias.zero_()
    return head


@dataclass
class BestAccuracy:
    """Best val top-1 and best val top-5 over the epochs (each its own maximum, as VICReg reports)."""

    top1: float = 0.0
    top5: float = 0.0
    epoch: int = -1

    def update(self, top1: float, top5: float, epoch: int) -> None:
        if top1 > self.top1 or self.epoch < 0:
            self.top1, self.epoch = top1, epoch
        self.top5 = max(self.top5, top5)

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5}


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
    show_progress: bool = True,
) -> TrainedHeads:
    """Train one linear head per learning rate at once: each batch of features feeds every head (one batched
    matmul), each head has its own SGD step (momentum, wd, per-epoch cosine). Every head starts from the same
    seeded init and sees the same seeded batch order, so head i equals a run with lrs[i] alone."""
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
            lr = base_lrs * cosine_factor(epoch, epochs)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch)).to(device)
            for start in range(0, count, batch_size):
                batch = order[start : start + batch_size]
                logits = torch.baddbmm(
                    bias[:, None, :], train_features[batch].expand(heads, -1, -1), weight.transpose(1, 2)
                )  # (H, B, K)
                losses = F.cross_entropy(
                    logits.flatten(0, 1), train_labels[batch].repeat(heads), reduction="none"
                )
                loss = losses.view(heads, -1).mean(dim=1).sum()
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
                    top1, top5 = _accuracy_of_linear(val_features, val_labels, weight[index], bias[index])
                    best[index].update(top1, top5, epoch)
    return TrainedHeads([result.metrics() for result in best], weight.detach(), bias.detach())


def _accuracy_of_linear(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor
) -> tuple[float, float]:
    hits1 = hits5 = 0
    for start in range(0, features.shape[0], 4096):
        logits = F.linear(features[start : start + 4096], weight, bias)
        top1, top5 = topk_correct(logits, labels[start : start + 4096])
        hits1, hits5 = hits1 + top1, hits5 + top5
    total = max(features.shape[0], 1)
    return 100.0 * hits1 / total, 100.0 * hits5 / total


@dataclass
class LinearConfig:
    """Everything `vicregl linear` needs; every field but the paths lands in result.json's params."""

    data: Path
    out: Path
    weights: str
    backbone: str | None = None
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))
    epochs: int = 100
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-6
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


def check_config(config: LinearConfig) -> None:
    """Option errors that need no data."""
    if not config.lrs or any(lr <= 0 for lr in config.lrs):
        raise UserError(f"--lr needs positive learning rates, got {config.lrs}")
    if len(set(config.lrs)) != len(config.lrs):
        raise UserError(f"--lr repeats a value: {config.lrs}")
    if config.epochs < 1 or config.batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")


def open_datasets(data: Path, train_transform, val_transform):
    """`data/train` and `data/val` as image folders, val indexed by train's classes (UserError for others)."""
    from vicregl_cli.data.readers import check_same_classes, image_folder

    train_set = image_folder(Path(data) / "train", train_transform)
    val_set = image_folder(Path(data) / "val", val_transform)
    check_same_classes(train_set, val_set)
    return train_set, val_set


def _params(config: LinearConfig, lr: float, extractor) -> dict:
    skipped = (
        "out",
        "weights",
        "data",
        "lrs",
        "backbone",
        "recalibrate_bn",
        "bn_batches",
    )  # recorded elsewhere
    params = {key: value for key, value in asdict(config).items() if key not in skipped}
    return {**params, "lr": lr, "bn_recalibration": extractor.identity["bn_recalibration"]}



def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """The module itself in one process; DistributedDataParallel over it under torchrun."""
    from vicregl_cli.distributed import world_size

    if world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def shuffled_loader(
    dataset, batch_size: int, seed: int, num_workers: int, device: torch.device
) -> DataLoader:
    """Seeded shuffling of `dataset`, sharded over ranks; `batch_size` is the total over all processes."""
    from vicregl_cli.distributed import world_size

    world = world_size()
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} is not divisible by the {world} processes")
    if world > 1:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size // world,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )

def train_linear_point(config: LinearConfig, point: SweepPoint, run_dir: Path) -> dict:
    """One learning rate of the protocol: augmented train images through the frozen backbone, val
    features from the cache (the centre-crop view never changes); DDP over the head under torchrun."""
    from vicregl_cli.distributed import is_main_process
    from vicregl_cli.evaluate.features import (
        eval_transform,
        extractor_from_config,
        resolve_weights,
        setup_device,
        train_transform,
    )
    from vicregl_cli.report import make_result

    started = time.perf_counter()
    lr = point.params["lr"]
    weights = resolve_weights(config.weights, config.backbone)
    device = setup_device(config.device)
    eval_view = eval_transform(config.resize, config.image_size)
    train_set, val_set = open_datasets(
        config.data, train_transform(config.image_size, config.min_scale), eval_view
    )
    bn_set = copy.copy(train_set)
    bn_set.transform = eval_view
    extractor = extractor_from_config(config, weights, device, bn_set)
    val_features, val_labels = extractor.features(val_set, "val features")
    extractor.prepare()
    backbone = extractor.model
    head = new_head(backbone.spec.representation_size, len(train_set.classes), config.seed).to(device)
    trained_head = wrap_ddp(head, device)
    loader = shuffled_loader(train_set, config.batch_size, config.seed, config.num_workers, device)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: cosine_factor(epoch, config.epochs)
    )
    torch.manual_seed(config.seed)
    best = BestAccuracy()
    val_features, val_labels = val_features.to(device), val_labels.to(device)
    backbone.eval()
    with track(f"linear lr={lr:g}", total=config.epochs * len(loader), enabled=is_main_process()) as tracker:
        for epoch in range(config.epochs):
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            for images, labels in loader:
                with torch.no_grad():
                    _, pooled = backbone(images.to(device, non_blocking=True))
                loss = F.cross_entropy(trained_head(pooled), labels.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                tracker.advance(loss=loss.item(), lr=scheduler.get_last_lr()[0])
            scheduler.step()
            with torch.no_grad():
                best.update(*_accuracy_of_linear(val_features, val_labels, head.weight, head.bias), epoch)
    return make_result(
        "linear",
        backbone.spec.name,
        weights,
        str(config.data),
        _params(config, lr, extractor),
        best.metrics(),
        time.perf_counter() - started,
    )


def _precomputed(records: dict[str, dict], point: SweepPoint, run_dir: Path) -> dict:
    """run_point of the cached mode: every head was trained together beforehand."""
    return records[point.name]


def run_linear(config: LinearConfig, slurm: SlurmOptions | None = None) -> list[dict]:
    """Check everything cheap first (options, data layout, weights fit), then run the sweep or cached mode."""
    from vicregl_cli.backbones import load_backbone
    from vicregl_cli.evaluate.features import eval_transform, resolve_weights

    check_config(config)
    weights = resolve_weights(config.weights, config.backbone)
    eval_view = eval_transform(config.resize, config.image_size)
    open_datasets(config.data, None, None)
    backbone_name = load_backbone(config.backbone, weights).spec.name
    config.backbone = backbone_name
    if not config.cached:
        points = [SweepPoint(point_name("", lr=lr), {"lr": lr}) for lr in config.lrs]
        run_point = functools.partial(train_linear_point, config)
        return run_sweep(Path(config.out), points, run_point, metric="top1", title="linear", slurm=slurm)
    if slurm is not None:
        raise UserError("--cached trains every learning rate in one process: drop --slurm, or drop --cached")
    points = [SweepPoint(point_name("cached", lr=lr), {"lr": lr}) for lr in config.lrs]
    pending = [point for point in points if not (Path(config.out) / point.name / "result.json").is_file()]
    records = _train_cached(config, weights, eval_view, pending) if pending else {}
    run_point = functools.partial(_precomputed, records)
    return run_sweep(Path(config.out), points, run_point, metric="top1", title="linear (cached features)")


def _train_cached(config: LinearConfig, weights: Path | None, eval_view, pending: list[SweepPoint]) -> dict:
    """Train the pending learning rates together on cached centre-crop features; one record per point."""
    from vicregl_cli.distributed import is_main_process
    from vicregl_cli.evaluate.features import extractor_from_config, setup_device
    from vicregl_cli.report import make_result

    started = time.perf_counter()
    device = setup_device(config.device)
    train_set, val_set = open_datasets(config.data, eval_view, eval_view)
    extractor = extractor_from_config(config, weights, device, train_set)
    train_features, train_labels = extractor.features(train_set, "train features")
    val_features, val_labels = extractor.features(val_set, "val features")
    lrs = [point.params["lr"] for point in pending]
    results = train_heads_on_features(
        train_features.to(device),
        train_labels.to(device),
        val_features.to(device),
        val_labels.to(device),
        lrs,
        num_classes=len(train_set.classes),
        epochs=config.epochs,
        batch_size=config.batch_size,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        seed=config.seed,
        show_progress=is_main_process(),
    )
    wall_time = time.perf_counter() - started
    records = {}
    for point, metrics in zip(pending, results.metrics, strict=True):
        params = {**_params(config, point.params["lr"], extractor), "heads_trained_together": len(pending)}
        records[point.name] = make_result(
            "linear-cached", extractor.model.spec.name, weights, str(config.data), params, metrics, wall_time
        )
    return records
