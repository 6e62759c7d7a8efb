"""The online k-NN monitor of pretraining (`--monitor-data ROOT --monitor-every N`): every N epochs, the
weighted 20-NN top-1 (and top-5) of the current backbone on ROOT/train -> ROOT/val, exactly what
`vicregl knn --k 20` computes on a checkpoint of that moment, without touching the training.

No effect on the run: the backbone is evaluated in eval mode without gradient (BatchNorm statistics
untouched, its train/eval mode restored), inside a seeded section that restores every RNG stream the
training draws on (the feature loaders' base seeds come from the global generator). Under torchrun every
rank extracts a strided shard of each split (evaluate/features.py), then all ranks hold all features.
The pretraining loop knows it only as its `Hooks.monitor` (pretrain/loop.py); vicregl_cli/pretrain_hooks.py
builds it from the run's config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from vicregl_cli.data.readers import ImageFolderDataset
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.classification import open_datasets
from vicregl_cli.evaluate.features import eval_transform, extract_features
from vicregl_cli.evaluate.knn import KnnConfig, clamp_ks, classify
from vicregl_cli.seeding import seeded

MONITOR_K = 20


def knn_settings(data: str | Path, image_size: int, num_workers: int) -> KnnConfig:
    """`vicregl knn`'s defaults with k 20, views of the run's large crop size (resize in the papers' 256 : 224
    proportion: 224 -> 256, 32 -> 36) and the run's data-loading workers."""
    return KnnConfig(
        data=Path(data),
        ks=(MONITOR_K,),
        image_size=image_size,
        resize=image_size * 8 // 7,
        num_workers=num_workers,
    )


@dataclass
class KnnMonitor:
    """The monitor's datasets and settings, opened (and checked) before the model is built."""

    settings: KnnConfig
    train_set: ImageFolderDataset
    val_set: ImageFolderDataset
    every: int
    seed: int

    def due(self, epochs_done: int, epochs: int) -> bool:
        """After every `every`-th epoch and after the last one."""
        return epochs_done % self.every == 0 or epochs_done == epochs

    def measure(self, backbone: nn.Module, device: str) -> dict[str, float]:
        """{"knn_top1@20": %, "knn_top5@20": %} of `backbone` as it is now; every rank must call it."""
        was_training = backbone.training
        with seeded(self.seed):
            train = self._features(backbone, self.train_set, device, "train")
            val = self._features(backbone, self.val_set, device, "val")
            metrics = classify(self.settings, train, val, len(self.train_set.classes), torch.device(device))
        backbone.train(was_training)
        return {f"knn_{name}": value for name, value in metrics.items()}

    def _features(self, backbone: nn.Module, dataset: ImageFolderDataset, device: str, split: str) -> tuple:
        """(features, labels) of one split, extracted as `vicregl knn` does (eval mode, rank shards)."""
        features = extract_features(
            backbone, dataset, batch_size=self.settings.batch_size, num_workers=self.settings.num_workers,
            device=device, description=f"k-NN monitor: {split} features",
        )  # fmt: skip
        return features, torch.as_tensor(dataset.targets, dtype=torch.int64)


def open_monitor(
    data: str | Path | None, every: int, image_size: int, num_workers: int, seed: int
) -> KnnMonitor | None:
    """The run's monitor on DATA/train -> DATA/val every `every` epochs (None without data); a missing or
    mismatched layout is a UserError. `vicregl pretrain` passes its --monitor-data, --monitor-every, large
    crop size, workers and seed (vicregl_cli/pretrain_hooks.py)."""
    if data is None:
        return None
    if every < 1:
        raise UserError(f"--monitor-every {every}: give a number of epochs >= 1")
    settings = knn_settings(data, image_size, num_workers)
    transform = eval_transform(settings.resize, settings.image_size)
    train_set, val_set = open_datasets(settings.data, transform, transform)
    settings = replace(settings, ks=tuple(clamp_ks(settings.ks, len(train_set))))
    return KnnMonitor(settings, train_set, val_set, every, seed)
