"""In-context dense retrieval: each query patch's k nearest memory patches by cosine (exact, tiled with
bounded memory as the k-NN protocol searches; or faiss's exact inner-product index), their label histograms
weighted by softmax(similarity / T), the patch predictions upsampled bilinearly to pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.knn import nearest_neighbours

SEARCHES = ("torch", "faiss")


def search_faiss(queries: Tensor, memory: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(similarities, indices) from faiss's exact inner-product index (unit vectors: cosine). Same
    neighbours as the torch search up to float rounding and the order of exact ties."""
    try:
        import faiss  # optional: only --search faiss
    except ImportError as error:
        raise UserError("--search faiss needs faiss (pip install faiss-cpu)") from error
    index = faiss.IndexFlatIP(memory.shape[1])
    index.add(memory.numpy())
    similarities, indices = index.search(queries.numpy(), k)
    return torch.from_numpy(similarities), torch.from_numpy(indices).long()


def retrieve(
    queries: Tensor,
    memory_features: Tensor,
    memory_labels: Tensor,
    *,
    k: int,
    temperature: float,
    query_chunk: int = 1024,
    memory_chunk: int | None = 65536,
    search: str = "torch",
) -> Tensor:
    """(Q, C) label distributions of the queries (Q, D): softmax(cos / T) over each one's k nearest unit-norm
    memory rows, weighting their histograms (N, C). Tiles of at most query_chunk × memory_chunk."""
    k = min(k, memory_features.shape[0])
    ones = torch.ones(memory_features.shape[0], dtype=memory_features.dtype, device=memory_features.device)
    outputs = []
    for start in range(0, queries.shape[0], query_chunk):
        block = torch.nn.functional.normalize(queries[start : start + query_chunk].float(), dim=1)
        if search == "faiss":
            similarities, indices = search_faiss(block.cpu(), memory_features.cpu(), k)
            similarities, indices = similarities.to(block.device), indices.to(block.device)
        else:
            similarities, indices = nearest_neighbours(block, memory_features, k, memory_chunk, ones)
        weights = torch.softmax(similarities / temperature, dim=1)
        outputs.append(torch.einsum("qk,qkc->qc", weights, memory_labels[indices]))
    return torch.cat(outputs)


def upsample_argmax(patch_scores: Tensor, grid: int, size: int) -> Tensor:
    """(B, S, S) class maps from (B, grid², C) patch scores: bilinear upsampling to S, then argmax."""
    maps = patch_scores.transpose(1, 2).reshape(patch_scores.shape[0], -1, grid, grid)
    upsampled = torch.nn.functional.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return upsampled.argmax(dim=1)
