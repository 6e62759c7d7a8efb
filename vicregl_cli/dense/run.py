"""One dense point's compute: the frozen backbone (BatchNorm re-estimated for random init), then either the
retrieval memory + the validation retrieval, or k-means of the validation patches; per-class IoU file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vicregl_cli.dense.config import DenseConfig
from vicregl_cli.dense.data import PairedImages
from vicregl_cli.dense.features import dense_model, fuse_batchnorm, patch_features
from vicregl_cli.dense.kmeans import cluster, clustering_iou
from vicregl_cli.dense.memory import Memory, balanced_patches, patch_histograms
from vicregl_cli.dense.metrics import confusion, miou_metrics
from vicregl_cli.dense.retrieval import retrieve, upsample_argmax
from vicregl_cli.distributed import compute_device, is_main_process
from vicregl_cli.evaluate.features import recalibrate_batchnorm
from vicregl_cli.files import write_json_atomic
from vicregl_cli.progress import track
from vicregl_cli.sweep import SweepPoint

PER_CLASS_FILE = "per_class_iou.json"


@dataclass(frozen=True)
class DenseTask:
    """A checked dense point (picklable for SLURM): the config (`DenseConfig`), the resolved grid, classes
    and files, and what the point runs (patches per memory view, or the k-means Ks)."""

    config: DenseConfig
    stride: int
    grid: int
    class_names: tuple[str, ...]
    reduce_zero_label: bool
    train_pairs: tuple[tuple[Path, Path], ...]
    val_pairs: tuple[tuple[Path, Path], ...]
    bn_batches: int = 0
    per_image: int | None = None
    clusters: tuple[int, ...] = ()

    def images(self, split: str, augment_seed: int | None = None) -> PairedImages:
        pairs = list(self.train_pairs if split == "train" else self.val_pairs)
        return PairedImages(pairs, self.config.input_size, augment_seed, self.reduce_zero_label)

    def loader(self, dataset: PairedImages) -> DataLoader:
        return DataLoader(dataset, batch_size=self.config.batch_size, num_workers=self.config.num_workers)


def build_memory(task: DenseTask, model: nn.Module, device: torch.device) -> tuple[Tensor, Tensor]:
    """(unit features (N, D), label histograms (N, C)) of the training views: `passes` augmented views per
    image (one plain view without augmentation), `per_image` class-balanced patches of each (None: all)."""
    config = task.config
    generator = torch.Generator().manual_seed(config.seed)
    memory = Memory([], [])
    for index in range(config.passes):
        seed = config.seed * 1000 + index if config.augment else None
        loader = task.loader(task.images("train", seed))
        with track(f"memory pass {index + 1}/{config.passes}", total=len(loader), log_every=20) as tracker:
            for images, masks in tracker.wrap(loader):
                features = patch_features(model, images.to(device), config.stage)
                histograms = patch_histograms(masks.to(device), task.grid, len(task.class_names))
                keep = task.per_image and balanced_patches(histograms, task.per_image, generator)
                memory.add(features, histograms, keep)
    return memory.tensors()


def evaluate_retrieval(task: DenseTask, model: nn.Module, device: torch.device) -> tuple[dict, dict]:
    """mIoU (Hungarian, identity) of the validation images' retrieved label maps, and IoU per class."""
    config = task.config
    memory_features, memory_labels = (tensor.to(device) for tensor in build_memory(task, model, device))
    num_classes = len(task.class_names)
    counts = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    loader = task.loader(task.images("val"))
    with track("retrieval", total=len(loader), log_every=20) as tracker:
        for images, masks in tracker.wrap(loader):
            features = patch_features(model, images.to(device), config.stage)
            scores = retrieve(features.flatten(0, 1), memory_features, memory_labels, k=config.k,
                              temperature=config.temperature, query_chunk=config.query_chunk,
                              memory_chunk=config.memory_chunk, search=config.search)  # fmt: skip
            predicted = upsample_argmax(scores.view(*features.shape[:2], -1), task.grid, config.input_size)
            counts += confusion(masks, predicted.cpu(), num_classes, num_classes)
    return miou_metrics(counts, list(task.class_names))


def evaluate_kmeans(task: DenseTask, model: nn.Module, device: torch.device) -> tuple[dict, dict]:
    """mIoU of k-means of the validation patches for each K (K = classes: `mIoU`, Hungarian; larger K:
    `mIoU@K`, majority), and IoU per class for each."""
    config = task.config
    features, masks = [], []
    loader = task.loader(task.images("val"))
    with track("val features", total=len(loader), log_every=20) as tracker:
        for images, batch_masks in tracker.wrap(loader):
            features.append(patch_features(model, images.to(device), config.stage).float().cpu())
            masks.append(batch_masks.to(torch.uint8))
    patches, all_masks = torch.cat(features), torch.cat(masks)
    num_classes = len(task.class_names)
    metrics, per_class = {}, {}
    for clusters in task.clusters:
        assignments = cluster(patches.flatten(0, 1), clusters, seed=config.seed,
                              iterations=config.kmeans_iterations, search=config.search)  # fmt: skip
        iou = clustering_iou(assignments.view(patches.shape[:2]), all_masks, task.grid, num_classes, clusters)
        name = "mIoU" if clusters == num_classes else f"mIoU@{clusters}"
        metrics[name] = 100 * iou.mean()
        per_class[name] = dict(zip(task.class_names, (100 * iou).tolist(), strict=True))
    return metrics, per_class


def run_point(point: SweepPoint) -> dict[str, float]:
    """Compute one dense point's metrics; IoU per class goes to RUN/per_class_iou.json."""
    task: DenseTask = point.task
    device = compute_device(task.config.device)
    model = dense_model(point.weights, task.config.dilate, device)
    if task.bn_batches:
        recalibrate_batchnorm(model, task.images("train"), num_batches=task.bn_batches,
                              batch_size=task.config.batch_size, num_workers=task.config.num_workers,
                              device=device, seed=point.weights.seed)  # fmt: skip
    model = fuse_batchnorm(model).to(memory_format=torch.channels_last)
    evaluate = evaluate_kmeans if task.clusters else evaluate_retrieval
    metrics, per_class = evaluate(task, model, device)
    if point.folder is not None and is_main_process():
        write_json_atomic(point.folder / PER_CLASS_FILE, per_class)
    return metrics
