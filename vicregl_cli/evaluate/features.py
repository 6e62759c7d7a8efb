"""Frozen pooled features: backbone loading (with BatchNorm re-estimation for random init), extraction in eval
mode sharded across ranks, and an on-disk cache keyed by weights + backbone + transform + dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from vicregl_cli.backbones.registry import get_spec
from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.data.image_sizes import small_images_note
from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.distributed import is_main_process, rank, world_size
from vicregl_cli.errors import UserError
from vicregl_cli.files import write_atomic
from vicregl_cli.progress import track

CACHE_FORMAT = 1
# The evaluation view's resize, as DINO's evaluation code (Resize(256, interpolation=3)); the training crop
# keeps torchvision's default (bilinear), as VICReg's and DINO's training views do. The cache identity
# records it, so features cached with another interpolation are not reused.
INTERPOLATION = transforms.InterpolationMode.BICUBIC


def eval_transform(resize: int = 256, crop: int = 224) -> transforms.Compose:
    """The papers' evaluation view: short side to `resize` (bicubic), centre crop `crop`, ImageNet
    normalisation."""
    if resize < crop:
        raise UserError(
            f"--resize {resize} is smaller than --image-size {crop}; the centre crop would not fit"
        )
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=INTERPOLATION),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def warn_if_small_images(protocol: str, paths: Sequence[str | Path], image_size: int, resize: int) -> None:
    """One stderr line, from the plan, when the images are far smaller than the evaluation view, naming the
    flags that fit them (the test segmentation's plan applies to its crop: data/image_sizes.py)."""
    note = small_images_note(paths, image_size, resize)
    if note is not None and is_main_process():
        print(f"{protocol}: {note}", file=sys.stderr)


def train_transform(crop: int = 224, min_scale: float = 0.08) -> transforms.Compose:
    """The linear / semi training view: RandomResizedCrop (bicubic) + horizontal flip, ImageNet
    normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(crop, scale=(min_scale, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def recalibrate_batchnorm(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_batches: int,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over `num_batches` batches of a
    seeded random sample of `dataset` (torch.optim.swa_utils.update_bn: train mode, momentum None, no
    gradient); returns the images used. Leaves the model in eval mode.

    A randomly initialised network's running statistics (mean 0, variance 1) do not describe its activations,
    so its eval-mode features are meaningless without this."""
    if not batchnorm_layers(model) or num_batches <= 0:
        model.eval()
        return 0
    generator = torch.Generator().manual_seed(seed)
    count = min(len(dataset), num_batches * batch_size)
    indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    with track("BatchNorm re-estimation", total=len(loader), log_every=20) as tracker:
        torch.optim.swa_utils.update_bn(tracker.wrap(loader), model, device=torch.device(device))
    model.eval()
    return count


def _shard(size: int, rank: int, world: int) -> list[int]:
    """Rank `rank`'s strided shard: global indices rank, rank + world, ... (no padding, no duplicates)."""
    return list(range(rank, size, world))


def _gather_shards(local: Tensor, size: int, world: int) -> Tensor:
    """All-gather the strided shards of every rank into the full (size, C) tensor, in dataset order."""
    rows = (size + world - 1) // world
    padded = local.new_zeros((rows, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = local.new_empty((size, *local.shape[1:]))
    for source, part in enumerate(parts):
        full[source::world] = part[: len(range(source, size, world))]
    return full


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    description: str = "features",
) -> Tensor:
    """Pooled features (N, C) float32 on the CPU, in dataset order: eval mode (BatchNorm statistics
    untouched), no gradient; under torchrun each rank extracts a strided shard, then all ranks gather."""
    world = world_size()
    indices = _shard(len(dataset), rank(), world)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    model.eval()
    chunks = []
    with torch.inference_mode(), track(description, total=len(loader), enabled=is_main_process()) as tracker:
        for images, _ in loader:
            _, pooled = model(images.to(device, non_blocking=True))
            chunks.append(pooled.float())
            tracker.advance()
    width = model.spec.representation_size
    local = torch.cat(chunks) if chunks else torch.empty((0, width), device=device)
    if world > 1:
        local = _gather_shards(local, len(dataset), world)
    return local.cpu()


class ImageSamples(Protocol):
    """What extraction and its cache need of a dataset: items (image tensor, label), an image `root`,
    (path, label) `samples` under it, `targets` and `classes`. The ImageFolder reader and the list-file
    readers (Places205, iNaturalist 2018: vicregl_cli.data.lists.LabelledImages) both provide it."""

    root: str | Path
    samples: list[tuple[str | Path, int]]
    targets: list[int]
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


def dataset_fingerprint(dataset: ImageSamples) -> dict:
    """The file list (paths relative to the root, sizes, labels) and classes: what makes two datasets the
    same."""
    root = Path(dataset.root)
    files = [
        [str(Path(path).relative_to(root)), Path(path).stat().st_size, label]
        for path, label in dataset.samples
    ]
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return {"root": str(root.resolve()), "classes": list(dataset.classes), "files_sha256": digest}


@dataclass
class FeatureExtractor:
    """One frozen backbone and its identity; `features(dataset)` returns cached features or extracts them.

    `identity` holds what determines the features (weights sha256 or random seed, backbone, BatchNorm
    re-estimation, transform); the dataset fingerprint is added per call. `extractions` counts real ones."""

    model: nn.Module
    identity: dict
    device: torch.device
    batch_size: int
    num_workers: int = 0
    cache_dir: Path | None = None
    bn_dataset: Dataset | None = None
    bn_batches: int = 0
    seed: int = 0
    extractions: int = 0
    _recalibrated: bool = field(default=False, repr=False)

    def prepare(self) -> None:
        """Re-estimate BatchNorm statistics once, the first time features must really be computed."""
        if self._recalibrated:
            return
        self._recalibrated = True
        if self.bn_dataset is not None and self.bn_batches > 0:
            recalibrate_batchnorm(
                self.model,
                self.bn_dataset,
                num_batches=self.bn_batches,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                device=self.device,
                seed=self.seed,
            )

    def cache_path(self, dataset: ImageSamples) -> Path | None:
        if self.cache_dir is None:
            return None
        key = {"format": CACHE_FORMAT, **self.identity, "dataset": dataset_fingerprint(dataset)}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return Path(self.cache_dir) / f"{self.identity['backbone']}-{digest[:24]}.pt"

    def features(self, dataset: ImageSamples, description: str = "features") -> tuple[Tensor, Tensor]:
        """(features (N, C) float32, labels (N,) int64) for `dataset`, from the cache when present."""
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
        path = self.cache_path(dataset)
        if path is not None and path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if torch.equal(stored["labels"], labels):
                if is_main_process():
                    print(f"{description}: read from the cache {path}", file=sys.stderr)
                return stored["features"], labels
        self.prepare()
        self.extractions += 1
        features = extract_features(
            self.model,
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            description=description,
        )
        if path is not None and is_main_process():
            write_atomic(path, partial(torch.save, {"features": features, "labels": labels}))
        return features, labels


def frozen_extractor(
    weights: WeightsRef,
    *,
    device: torch.device,
    batch_size: int,
    resize: int,
    crop: int,
    num_workers: int = 0,
    cache_dir: Path | None = None,
    bn_dataset: Dataset | None = None,
    recalibrate_bn: bool | None = None,
    bn_batches: int = 100,
) -> FeatureExtractor:
    """The frozen backbone of `weights` on `device`, and what determines its features.

    `recalibrate_bn` None means: on for random init, off for loaded weights. `bn_dataset` (training
    images with the evaluation transform) feeds the re-estimation, seeded by the weights' seed."""
    model = weights.build().to(device)
    model.requires_grad_(False)
    model.eval()
    bn_batches = bn_batches_used(weights, recalibrate_bn, bn_batches)
    if bn_batches and bn_dataset is None:
        raise UserError("BatchNorm re-estimation needs training images")
    transform = dict(resize=resize, crop=crop, interpolation=INTERPOLATION.value, normalize="imagenet")
    identity = {
        "weights": weights.label if weights.is_random else weights.sha256,
        "backbone": weights.backbone,
        "bn_recalibration": bn_recalibration_params(bn_batches, batch_size, weights.seed),
        "transform": transform,
    }
    return FeatureExtractor(
        model=model,
        identity=identity,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=cache_dir,
        bn_dataset=bn_dataset,
        bn_batches=bn_batches,
        seed=weights.seed,
    )


def bn_batches_used(weights: WeightsRef, recalibrate_bn: bool | None, bn_batches: int) -> int:
    """Batches of BatchNorm re-estimation: `bn_batches` when asked (default: for random init only)."""
    if recalibrate_bn is None:
        recalibrate_bn = weights.is_random
    return bn_batches if recalibrate_bn and get_spec(weights.backbone).family == "resnet" else 0


def bn_recalibration_params(bn_batches: int, batch_size: int, seed: int) -> dict | None:
    """The recorded description of the BatchNorm re-estimation (None when there is none)."""
    return {"batches": bn_batches, "batch_size": batch_size, "seed": seed} if bn_batches else None


def frozen_params(config, weights: WeightsRef, train_set, val_set, swept: tuple[str, ...] = ()) -> dict:
    """The recorded params of a frozen-feature protocol: the config's fields (not paths, device or the swept
    grids), the resolved BatchNorm re-estimation, and the dataset sizes."""
    skipped = ("data", "cache_dir", "device", *swept)
    bn_batches = bn_batches_used(weights, config.recalibrate_bn, config.bn_batches)
    return {
        **{key: value for key, value in dataclasses.asdict(config).items() if key not in skipped},
        "recalibrate_bn": bool(bn_batches),
        "bn_recalibration": bn_recalibration_params(bn_batches, config.batch_size, weights.seed),
        "classes": len(train_set.classes),
        "train_images": len(train_set),
        "val_images": len(val_set),
    }


def extractor_from_config(config, weights: WeightsRef, device: torch.device, bn_dataset) -> FeatureExtractor:
    """`frozen_extractor` with the options the frozen protocols' configs share (batch_size, resize,
    image_size, num_workers, cache_dir, recalibrate_bn, bn_batches)."""
    return frozen_extractor(
        weights,
        device=device,
        batch_size=config.batch_size,
        resize=config.resize,
        crop=config.image_size,
        num_workers=config.num_workers,
        cache_dir=config.cache_dir,
        bn_dataset=bn_dataset,
        recalibrate_bn=config.recalibrate_bn,
        bn_batches=config.bn_batches,
    )
