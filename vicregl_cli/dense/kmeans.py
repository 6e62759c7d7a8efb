"""Dense k-means (unsupervised segmentation as Leopart / NeCo evaluate it): cluster the unit-norm validation
patch features with scikit-learn's k-means (faiss's when asked), the cluster maps upsampled (nearest) to
pixels; K = classes matched by the Hungarian method, larger K (overclustering) many-to-one by majority."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vicregl_cli.dense.metrics import class_iou, confusion, hungarian_mapping, majority_mapping
from vicregl_cli.errors import UserError


def cluster(features: Tensor, clusters: int, *, seed: int, iterations: int, search: str = "torch") -> Tensor:
    """(N,) cluster index of each unit-normalised row of `features` (N, D): k-means with one seeded start."""
    data = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    if search == "faiss":
        try:
            import faiss  # optional: only --search faiss
        except ImportError as error:
            raise UserError("--search faiss needs faiss (pip install faiss-cpu)") from error
        kmeans = faiss.Kmeans(data.shape[1], clusters, niter=iterations, seed=seed)
        kmeans.train(np.ascontiguousarray(data))
        return torch.from_numpy(kmeans.index.search(data, 1)[1][:, 0]).long()
    from sklearn.cluster import KMeans  # scikit-learn: imported only when a k-means point runs

    fitted = KMeans(clusters, n_init=1, max_iter=iterations, random_state=seed).fit(data)
    return torch.from_numpy(fitted.labels_.astype(np.int64))


def cluster_masks(assignments: Tensor, grid: int, size: int) -> Tensor:
    """(B, S, S) pixel cluster maps from (B, grid²) patch assignments, upsampled by nearest neighbour."""
    maps = assignments.view(-1, 1, grid, grid).float()
    return torch.nn.functional.interpolate(maps, size=(size, size), mode="nearest")[:, 0].long()


def clustering_iou(
    assignments: Tensor, masks: Tensor, grid: int, num_classes: int, clusters: int, chunk: int = 64
) -> np.ndarray:
    """IoU per class of (B, grid²) cluster assignments against (B, S, S) masks: Hungarian matching when
    `clusters` equals the class count, else each cluster to its majority class."""
    counts = torch.zeros((num_classes, clusters), dtype=torch.int64)
    for start in range(0, masks.shape[0], chunk):
        predicted = cluster_masks(assignments[start : start + chunk], grid, masks.shape[-1])
        counts += confusion(masks[start : start + chunk], predicted, num_classes, clusters)
    mapping = hungarian_mapping(counts) if clusters == num_classes else majority_mapping(counts)
    return class_iou(counts, mapping)
