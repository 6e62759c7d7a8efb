"""Semi-supervised evaluation (DESIGN §3): fine-tune backbone + linear head on 1 % or 10 % of the labels, SGD
momentum 0.9 without weight decay, 20 epochs, per-epoch cosine, separate backbone / head learning rates (the
paper's pair, or a grid over both); best val top-1 / top-5. Labelled subset: a SimCLR split file, or drawn per
class."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DistributedSampler, Subset

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.distributed import compute_device, is_main_process, world_size
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.classification import (
    BestAccuracy,
    check_training_options,
    cosine_factor,
    new_head,
    open_datasets,
    shuffled_loader,
    topk_correct,
    wrap_ddp,
)
from vicregl_cli.evaluate.features import (
    eval_transform,
    extract_features,
    train_transform,
    warn_if_small_images,
)
from vicregl_cli.progress import track
from vicregl_cli.protocol_defaults import SEMI_GRID_BACKBONE, SEMI_GRID_HEAD
from vicregl_cli.seeding import seeded
from vicregl_cli.sweep import SweepPoint, point_name
from vicregl_cli.tensorboard import ScalarLog

# percent -> (backbone lr, head lr): the VICReg paper's semi-supervised settings
DEFAULT_LRS = {1: (0.03, 0.08), 10: (0.01, 0.1)}
GRID_BACKBONE, GRID_HEAD = SEMI_GRID_BACKBONE, SEMI_GRID_HEAD  # `--grid` (VICReg B.2; see protocol_defaults)

METRIC = "top1"  # the metric that ranks the runs of a sweep


def balanced_subset(targets: list[int], percent: int, seed: int) -> list[int]:
    """Indices of ceil(percent / 100 × n_c) images (at least 1) of every class c, drawn by a seeded generator;
    the same targets, percent and seed always give the same subset. Sorted."""
    if not 0 < percent <= 100:
        raise UserError(f"--percent must be in 1..100, got {percent}")
    labels = torch.as_tensor(targets, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == label).flatten()
        if members.numel() == 0:
            continue
        keep = max(1, -(-percent * members.numel() // 100))  # exact integer ceiling
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:keep]])
    return sorted(torch.cat(chosen).tolist())


def read_split_file(path: Path, dataset) -> list[int]:
    """Indices of the images a SimCLR-format split file lists (one file name per line, class = the part before
    the first `_`, e.g. n01440764_10026.JPEG in train/n01440764/). Unknown classes / files: UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file {path} does not exist")
    names = list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))
    if not names:
        raise UserError(f"split file {path} lists no images")
    index_of = {
        (Path(sample).parent.name, Path(sample).name): i for i, (sample, _) in enumerate(dataset.samples)
    }
    unknown_classes = sorted({name.split("_")[0] for name in names} - set(dataset.classes))
    if unknown_classes:
        raise UserError(
            f"split file {path} names classes that {dataset.root} does not have: {unknown_classes[:10]} "
            "(the class is the part of each file name before the first `_`)"
        )
    missing = [name for name in names if (name.split("_")[0], name) not in index_of]
    if missing:
        raise UserError(
            f"split file {path}: {len(missing)} listed image(s) not found under {dataset.root}, "
            f"e.g. {missing[:5]}"
        )
    return sorted(index_of[(name.split("_")[0], name)] for name in names)


@dataclass(frozen=True)
class SemiConfig:
    """Everything `vicregl semi` needs besides the weights; the params record every field but the paths."""

    data: Path
    percent: int | None = None
    split_file: Path | None = None
    lrs_backbone: tuple[float, ...] | None = None
    lrs_head: tuple[float, ...] | None = None
    grid: bool = False  # sweep GRID_BACKBONE x GRID_HEAD where no lrs are given
    epochs: int = 20
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    image_size: int = 224
    resize: int = 256
    min_scale: float = 0.08
    num_workers: int = 8
    seed: int = 0
    device: str | None = None


def labelled_indices(config: SemiConfig, dataset) -> list[int]:
    """The labelled subset: the split file's images, else the seeded class-balanced `percent` %."""
    if (config.percent is None) == (config.split_file is None):
        raise UserError("give exactly one of --percent (1 or 10) and --split-file")
    if config.split_file is not None:
        return read_split_file(config.split_file, dataset)
    return balanced_subset(dataset.targets, config.percent, config.seed)


def default_lrs(config: SemiConfig, labelled: int, total: int) -> tuple[list[float], list[float]]:
    """The grids to sweep: the given ones, else with `grid` GRID_BACKBONE / GRID_HEAD, else the paper's pair
    for 1 % (10 % if the subset is ≥ 5 %)."""
    if config.grid:
        return list(config.lrs_backbone or GRID_BACKBONE), list(config.lrs_head or GRID_HEAD)
    percent = config.percent if config.percent is not None else (1 if labelled < 0.05 * total else 10)
    backbone_lr, head_lr = DEFAULT_LRS[1 if percent < 5 else 10]
    return list(config.lrs_backbone or [backbone_lr]), list(config.lrs_head or [head_lr])


class Classifier(nn.Module):
    """Backbone + linear head on its pooled features."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        _, pooled = self.backbone(images)
        return self.head(pooled)


def _evaluate(model: Classifier, val_set, config: SemiConfig, device: torch.device) -> tuple[float, float]:
    """Val top-1 / top-5 in eval mode, the val set sharded over ranks (features gathered, then the head)."""
    features = extract_features(
        model.backbone,
        val_set,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        device=device,
        description="val",
    )
    labels = torch.as_tensor(val_set.targets, device=device)
    with torch.no_grad():
        top1, top5 = topk_correct(model.head(features.to(device)), labels)
    return 100.0 * top1 / len(labels), 100.0 * top5 / len(labels)


def plan(config: SemiConfig, weights: WeightsRef) -> list[SweepPoint]:
    """Check options, data and the labelled subset (nothing computed): a point per (backbone lr, head lr)."""
    check_training_options(
        config.epochs,
        config.batch_size,
        {"--lr-backbone": config.lrs_backbone, "--lr-head": config.lrs_head},
    )
    eval_transform(config.resize, config.image_size)
    train_set, val_set = open_datasets(config.data, None, None)
    warn_if_small_images("semi", [path for path, _ in train_set.samples], config.image_size, config.resize)
    labelled = labelled_indices(config, train_set)
    lrs_backbone, lrs_head = default_lrs(config, len(labelled), len(train_set))
    skipped = ("data", "device", "lrs_backbone", "lrs_head", "grid")
    shared = {key: value for key, value in asdict(config).items() if key not in skipped}
    shared.update(
        classes=len(train_set.classes),
        labelled_images=len(labelled),
        train_images=len(train_set),
        val_images=len(val_set),
    )
    dataset = f"imagefolder:{Path(config.data).resolve()}"
    grid = [{"lr_backbone": lb, "lr_head": lh} for lb in lrs_backbone for lh in lrs_head]
    return [
        SweepPoint(point_name("", **lrs), "semi", {**shared, **lrs}, weights, dataset, config) for lrs in grid
    ]


def run_point(point: SweepPoint) -> dict[str, float]:
    """One (backbone lr, head lr) point: fine-tune on the labelled subset, BatchNorm in train mode, DDP under
    torchrun; evaluate after every epoch. Seeded, the caller's RNG restored. Curves in the run folder's tb/:
    train/loss (epoch mean over ranks), train/lr_backbone, train/lr_head, val/top1, val/top5 per epoch,
    metrics/top1, metrics/top5 (the record's) at the last."""
    config: SemiConfig = point.task
    lr_backbone, lr_head = point.params["lr_backbone"], point.params["lr_head"]
    device = compute_device(config.device)
    train_set, val_set = open_datasets(
        config.data,
        train_transform(config.image_size, config.min_scale),
        eval_transform(config.resize, config.image_size),
    )
    labelled = labelled_indices(config, train_set)
    backbone = point.weights.build()
    head = new_head(backbone.spec.representation_size, len(train_set.classes), config.seed)
    model = Classifier(backbone, head).to(device)
    trained = wrap_ddp(model, device)
    loader = shuffled_loader(
        Subset(train_set, labelled), config.batch_size, config.seed, config.num_workers, device
    )
    optimizer = torch.optim.SGD(
        [{"params": backbone.parameters(), "lr": lr_backbone}, {"params": head.parameters(), "lr": lr_head}],
        lr=lr_head,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: cosine_factor(epoch, config.epochs)
    )
    best = BestAccuracy()
    total = config.epochs * len(loader)
    curves = ScalarLog(point.folder, enabled=is_main_process())
    with seeded(config.seed), track(f"semi {point.name}", total=total, enabled=is_main_process()) as tracker:
        for epoch in range(config.epochs):
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            trained.train()
            lr_backbone, lr_head = scheduler.get_last_lr()
            loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of sample losses, samples) of this rank
            for images, labels in loader:
                logits = trained(images.to(device, non_blocking=True))
                loss = F.cross_entropy(logits, labels.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += torch.tensor([loss.item() * len(labels), len(labels)], dtype=torch.float64)
                tracker.advance(loss=loss.item(), lr=lr_head)
            scheduler.step()
            top1, top5 = _evaluate(model, val_set, config, device)
            best.update(top1, top5, epoch)
            lrs = {"lr_backbone": lr_backbone, "lr_head": lr_head}
            curves.scalars({"loss": _mean_over_ranks(loss_sum, device), **lrs}, epoch + 1, prefix="train/")
            curves.scalars({"top1": top1, "top5": top5}, epoch + 1, prefix="val/")
    curves.close()
    return best.metrics()


def _mean_over_ranks(loss_sum: Tensor, device: torch.device) -> float:
    """The epoch's mean training loss per sample over every rank, from each rank's (loss sum, samples)."""
    if world_size() > 1:
        totals = loss_sum.to(device)
        dist.all_reduce(totals)
        loss_sum = totals.cpu()
    return float(loss_sum[0] / loss_sum[1].clamp_min(1))
