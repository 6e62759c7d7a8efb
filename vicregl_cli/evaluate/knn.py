"""Weighted k-NN classification on L2-normalised frozen features (votes exp(cos / T), the DINO / VICReg
convention): every k from one top-k search, chunked over queries and train rows so memory stays bounded."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.distributed import compute_device, is_main_process
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.classification import open_datasets
from vicregl_cli.evaluate.features import (
    eval_transform,
    extractor_from_config,
    frozen_params,
    warn_if_small_images,
)
from vicregl_cli.progress import track
from vicregl_cli.sweep import SweepPoint

METRIC = None  # rank by the first metric: top-1 at the smallest k


def _similarity(queries: Tensor, train_block: Tensor, inverse_norms: Tensor) -> Tensor:
    """Cosine similarities of one (unit queries × train block) tile, the train rows normalised on the fly (no
    normalised copy of the train features): the only matrix that grows with the data."""
    return (queries @ train_block.to(queries.dtype).T).mul_(inverse_norms[None, :])


def _blocks(size: int, chunk: int) -> Iterator[slice]:
    for start in range(0, size, chunk):
        yield slice(start, min(start + chunk, size))


def inverse_norms(features: Tensor, dtype: torch.dtype = torch.float32, chunk: int = 65536) -> Tensor:
    """1 / max(‖row‖, 1e-12) per row (F.normalize's convention), computed in blocks without a full copy."""
    parts = [
        features[block].to(dtype).norm(dim=1).clamp_min(1e-12).reciprocal()
        for block in _blocks(features.shape[0], chunk)
    ]
    return torch.cat(parts)


def nearest_neighbours(
    queries: Tensor,
    train: Tensor,
    k: int,
    train_chunk_size: int | None = None,
    train_inverse_norms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(cosine similarities, train indices) of the k most similar train rows per query, most similar first.

    `queries` must be L2-normalised; train rows are normalised on the fly. With `train_chunk_size`, train rows
    are scanned in blocks, merging a running top-k, so no tile exceeds len(queries) × train_chunk_size."""
    chunk = train.shape[0] if not train_chunk_size else train_chunk_size
    if train_inverse_norms is None:
        train_inverse_norms = inverse_norms(train, queries.dtype)
    best_values: Tensor | None = None
    best_indices: Tensor | None = None
    for block in _blocks(train.shape[0], chunk):
        similarities = _similarity(queries, train[block], train_inverse_norms[block])
        values, indices = similarities.topk(min(k, similarities.shape[1]), dim=1)
        indices += block.start
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            values, order = values.topk(min(k, values.shape[1]), dim=1)
            indices = indices.gather(1, order)
        best_values, best_indices = values, indices
    return best_values, best_indices


def class_scores(
    similarities: Tensor, neighbour_labels: Tensor, num_classes: int, temperature: float
) -> Tensor:
    """Per-class vote totals (Q, num_classes): each neighbour adds exp(cos / T) to its class."""
    weights = (similarities / temperature).exp()
    scores = torch.zeros((similarities.shape[0], num_classes), dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def hits_at(scores: Tensor, labels: Tensor, ranks: Sequence[int]) -> dict[int, Tensor]:
    """For each n in `ranks`, whether the true class is among the n highest-scoring classes (ties
    counted in its favour; a class with no vote never counts): independent of tie-breaking order."""
    true_scores = scores.gather(1, labels[:, None])
    above = (scores > true_scores).sum(dim=1)
    voted = true_scores[:, 0] > 0
    return {n: (above < n) & voted for n in ranks}


def clamp_ks(ks: Sequence[int], num_train: int) -> list[int]:
    """Sorted distinct ks, each larger than the train set clamped to its size with a warning."""
    if not ks:
        raise UserError("give at least one k (--k 20 200)")
    if any(k < 1 for k in ks):
        raise UserError(f"every k must be at least 1, got {list(ks)}")
    if num_train < 1:
        raise UserError("the train set is empty: k-NN needs training features")
    clamped = []
    for k in ks:
        if k > num_train:
            warnings.warn(
                f"k={k} is larger than the train set ({num_train} images): using k={num_train}", stacklevel=2
            )
            k = num_train
        if k not in clamped:
            clamped.append(k)
    return sorted(clamped)


def knn_evaluate(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    ks: Sequence[int],
    *,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
    train_chunk_size: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of weighted k-NN for every k, from one neighbour search of max(ks).

    Cosine similarity: features need not be normalised (train rows are normalised tile by tile).
    `num_classes` defaults to the largest train label + 1; classes absent from the queries are still voted
    for. Returns {"top1@k": ..., "top5@k": ...} for each k."""
    if temperature <= 0:
        raise UserError(f"--temperature must be positive, got {temperature}")
    if chunk_size < 1 or (train_chunk_size is not None and train_chunk_size < 0):
        raise UserError("chunk sizes must be positive")
    ks = clamp_ks(ks, train_features.shape[0])
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    dtype = torch.promote_types(train_features.dtype, torch.float32)
    train_inverse_norms = inverse_norms(train_features, dtype)
    device = train_features.device
    query_features, train_labels, query_labels = (
        x.to(device) for x in (query_features, train_labels, query_labels)
    )
    top5 = min(5, num_classes)
    correct = {(n, k): 0 for k in ks for n in (1, top5)}
    total_chunks = (query_features.shape[0] + chunk_size - 1) // chunk_size
    with track("k-NN", total=total_chunks, log_every=10, enabled=show_progress) as tracker:
        for block in _blocks(query_features.shape[0], chunk_size):
            queries = torch.nn.functional.normalize(query_features[block].to(dtype), dim=1)
            similarities, indices = nearest_neighbours(
                queries, train_features, ks[-1], train_chunk_size, train_inverse_norms
            )
            neighbour_labels = train_labels[indices]
            for k in ks:
                scores = class_scores(similarities[:, :k], neighbour_labels[:, :k], num_classes, temperature)
                for n, hits in hits_at(scores, query_labels[block], (1, top5)).items():
                    correct[(n, k)] += int(hits.sum())
            tracker.advance()
    count = max(query_features.shape[0], 1)
    metrics = {}
    for k in ks:
        metrics[f"top1@{k}"] = 100.0 * correct[(1, k)] / count
        metrics[f"top5@{k}"] = 100.0 * correct[(top5, k)] / count
    return metrics


@dataclass(frozen=True)
class KnnConfig:
    """Everything `vicregl knn` needs besides the weights; the run's params record each field but `data`."""

    data: Path
    ks: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
    image_size: int = 224
    resize: int = 256
    batch_size: int = 256
    num_workers: int = 8
    chunk_size: int = 256
    train_chunk_size: int | None = 131072
    cache_dir: Path | None = None
    recalibrate_bn: bool | None = None
    bn_batches: int = 100
    device: str | None = None


def plan(config: KnnConfig, weights: WeightsRef) -> list[SweepPoint]:
    """Check options, layout and class lists (nothing computed): one point, every k in one search."""

    if config.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {config.temperature}")
    if config.chunk_size < 1 or (config.train_chunk_size is not None and config.train_chunk_size < 0):
        raise UserError("chunk sizes must be positive")
    eval_transform(config.resize, config.image_size)
    train_set, val_set = open_datasets(config.data, None, None)
    warn_if_small_images("knn", [path for path, _ in train_set.samples], config.image_size, config.resize)
    ks = clamp_ks(config.ks, len(train_set))
    params = {**frozen_params(config, weights, train_set, val_set), "ks": ks}
    task = replace(config, ks=tuple(ks))
    dataset = f"imagefolder:{Path(config.data).resolve()}"
    return [SweepPoint("knn", "knn", params, weights, dataset, task)]


def classify(
    config: KnnConfig,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    device: torch.device,
) -> dict[str, float]:
    """Top-1 / top-5 per k of extracted (features, labels) pairs with the config's ks, temperature and tiles:
    what `vicregl knn` and the online pretraining monitor (evaluate/monitor.py) both compute."""
    return knn_evaluate(
        train[0].to(device),
        train[1],
        val[0].to(device),
        val[1],
        config.ks,
        temperature=config.temperature,
        num_classes=num_classes,
        chunk_size=config.chunk_size,
        train_chunk_size=config.train_chunk_size,
        show_progress=is_main_process(),
    )


def run_point(point: SweepPoint) -> dict[str, float]:
    """Extract (or read cached) train / val features and evaluate every k: top-1 / top-5 per k (also as
    TensorBoard scalars in the run folder's tb/)."""

    config: KnnConfig = point.task
    transform = eval_transform(config.resize, config.image_size)
    train_set, val_set = open_datasets(config.data, transform, transform)
    device = compute_device(config.device)
    extractor = extractor_from_config(config, point.weights, device, train_set)
    train = extractor.features(train_set, "train features")
    val = extractor.features(val_set, "val features")
    return classify(config, train, val, len(train_set.classes), device)
