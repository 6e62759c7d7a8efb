"""What the linear probe and semi-supervised fine-tuning share: the two splits, the VICReg head, the
per-epoch cosine, the best-accuracy bookkeeping, the seeded sharded loader and the DDP wrapper."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from vicregl_cli.data.inat import read_inat18
from vicregl_cli.data.lists import LabelledImages
from vicregl_cli.data.places205 import read_places205
from vicregl_cli.data.readers import ImageFolderDataset, check_same_classes, image_folder
from vicregl_cli.distributed import world_size
from vicregl_cli.errors import UserError

HEAD_INIT_STD = 0.01
EVAL_CHUNK = 4096


def open_datasets(
    data: Path,
    train_transform: Any,
    val_transform: Any,
    *,
    layout: str = "imagefolder",
    train_list: Path | None = None,
    val_list: Path | None = None,
) -> tuple[ImageFolderDataset | LabelledImages, ...]:
    """The train and val splits under `data` in `layout`: "imagefolder" (`data/train`, `data/val`, val
    indexed by train's classes), "places205" (list files, which `train_list` / `val_list` may replace) or
    "inat18" (train2018.json / val2018.json). Layout errors raise a UserError before any image is read."""
    if (train_list or val_list) and layout != "places205":
        raise UserError("--train-list / --val-list apply to the places205 layout only")
    if layout == "places205":
        return read_places205(data, train_transform, val_transform, train_list=train_list, val_list=val_list)
    if layout == "inat18":
        return read_inat18(data, train_transform, val_transform)
    train_set = image_folder(Path(data) / "train", train_transform)
    val_set = image_folder(Path(data) / "val", val_transform)
    check_same_classes(train_set, val_set)
    return train_set, val_set


def topk_correct(logits: Tensor, labels: Tensor) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) of a batch of logits; top-5 is top-min(5, classes)."""
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def accuracy_of_linear(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> tuple[float, float]:
    """Top-1 / top-5 accuracy (percent) of the linear classifier (weight, bias) on features, in chunks."""
    hits1 = hits5 = 0
    for start in range(0, features.shape[0], EVAL_CHUNK):
        logits = F.linear(features[start : start + EVAL_CHUNK], weight, bias)
        top1, top5 = topk_correct(logits, labels[start : start + EVAL_CHUNK])
        hits1, hits5 = hits1 + top1, hits5 + top5
    total = max(features.shape[0], 1)
    return 100.0 * hits1 / total, 100.0 * hits5 / total


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


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """The module itself in one process; DistributedDataParallel over it under torchrun."""
    if world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def shuffled_loader(
    dataset: Dataset, batch_size: int, seed: int, num_workers: int, device: torch.device
) -> DataLoader:
    """Seeded shuffling and worker seeds for `dataset`, sharded over ranks; `batch_size` is
    the total over all processes."""
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
        generator=torch.Generator().manual_seed(seed),  # the workers' augmentation seeds
    )


def check_training_options(epochs: int, batch_size: int, grids: dict[str, list[float] | None]) -> None:
    """Option errors that need no data: epochs and batch size at least 1, each lr grid distinct and >= 0."""
    if epochs < 1 or batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")
    for option, values in grids.items():
        if values is not None and (any(lr < 0 for lr in values) or len(set(values)) != len(values)):
            raise UserError(f"{option} needs distinct non-negative learning rates, got {values}")
