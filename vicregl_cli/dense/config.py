"""What `vicregl dense` is asked for: the options of both dense protocols, with the papers' defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROTOCOLS = ("retrieval", "kmeans")
PAPER_MEMORY_SIZES = (1024 * 10**2, 1024 * 10**3, 1024 * 10**4)  # Hummingbird's memory sizes
OVERCLUSTERING = (100, 300, 500)


@dataclass(frozen=True)
class DenseConfig:
    """Everything `vicregl dense` needs besides the weights. `memory_sizes`: one retrieval run each (None:
    every training patch); `clusters`: the overclustering Ks (k-means also runs K = the class count)."""

    dataset: str
    data_root: Path
    protocol: str = "retrieval"
    memory_sizes: tuple[int | None, ...] = (PAPER_MEMORY_SIZES[-1],)
    k: int = 30
    temperature: float = 0.02
    passes: int = 2
    augment: bool = True
    input_size: int = 512
    stage: int = 4
    dilate: bool = False
    clusters: tuple[int, ...] = OVERCLUSTERING
    kmeans_iterations: int = 300
    search: str = "torch"
    batch_size: int = 16
    num_workers: int = 4
    query_chunk: int = 1024
    memory_chunk: int = 65536
    recalibrate_bn: bool | None = None
    bn_batches: int = 100
    seed: int = 0
    device: str | None = None
