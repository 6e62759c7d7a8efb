"""`vicregl dense`: dense features evaluated without training (in-context retrieval, k-means)."""

from __future__ import annotations

from pathlib import Path

import typer

from vicregl_cli.cli_options import with_run_options
from vicregl_cli.commands.app import BACKBONE_HELP, DATA_FLAGS, WEIGHTS_HELP, app, multi_value
from vicregl_cli.errors import UserError
from vicregl_cli.options import RunOptions
from vicregl_cli.sweep import parse_grid


def parse_memory_size(token: str) -> int | None:
    """A --memory-size value: `all` (None), or a whole number of patches (10240000, 1024e4)."""
    if token == "all":
        return None
    value = float(token)
    if not value.is_integer():
        raise ValueError(token)
    return int(value)


@app.command(
    cls=multi_value("--memory-size", "--clusters"),
    epilog="Example: vicregl dense --weights runs/r50/backbone.pth --dataset voc "
    "--data VOCdevkit/VOC2012 --out runs/r50-dense",
)
@with_run_options()
def dense(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    dataset: str = typer.Option(..., help="voc, voc-aug, cityscapes or ade20k (segment's readers)"),
    data: Path = typer.Option(..., *DATA_FLAGS, help="Dataset root, e.g. VOCdevkit/VOC2012"),
    out: Path = typer.Option(..., help="Sweep folder: a run folder per point (result.json, "
                             "per_class_iou.json), summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    protocol: str = typer.Option("retrieval", help="retrieval (Hummingbird in-context retrieval) or kmeans"),
    memory_size: list[str] = typer.Option(None, "--memory-size", help="Memory patches, one run each: "
                                          "--memory-size 102400 1024000 10240000 or all (default 10240000)"),
    k: int = typer.Option(30, "--k", help="Neighbours per query patch"),
    temperature: float = typer.Option(0.02, help="Neighbours weighted softmax(cos / T)"),
    passes: int = typer.Option(2, help="Augmented views of each training image in the memory"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="--no-augment: one plain resized "
                                 "view per training image (a deterministic memory)"),
    input_size: int = typer.Option(512, help="Square input side (a multiple of the stage's stride)"),
    stage: int = typer.Option(4, help="Backbone stage 1..4 whose map gives the patches (4 = the last)"),
    dilate: bool = typer.Option(False, "--dilate", help="ResNet (bottleneck) in segment's dilated "
                                "output-stride-8 form"),
    clusters: list[str] = typer.Option(None, "--clusters", help="k-means overclustering Ks (default 100 300 "
                                       "500, capped at the patch count); K = the class count always runs"),
    kmeans_iterations: int = typer.Option(300, help="k-means iterations at most"),
    search: str = typer.Option("torch", help="torch (exact, tiled) or faiss (exact index; also its k-means)"),
    batch_size: int = typer.Option(16, help="Images per forward pass"),
    workers: int = typer.Option(4, help="Data-loading processes"),
    query_chunk: int = typer.Option(1024, help="Query patches per similarity tile"),
    memory_chunk: int = typer.Option(65536, help="Memory patches per similarity tile"),
    bn_recalibration: bool = typer.Option(None, "--bn-recalibration/--no-bn-recalibration",
                                          help="Re-estimate BatchNorm statistics on train images (default: "
                                          "random init only)"),
    bn_batches: int = typer.Option(100, help="Batches for the BatchNorm re-estimation"),
    seed: int = typer.Option(0, help="Augmentation, patch sampling, k-means and random init seed"),
    *,
    run: RunOptions,
) -> None:
    """Dense features without training: in-context retrieval (Hummingbird) or k-means of patch features,
    mIoU (Hungarian-matched as open-hummingbird-eval, and identity)."""
    try:
        sizes = tuple(parse_memory_size(token) for token in parse_grid(memory_size, "--memory-size", str))
    except ValueError as error:
        raise UserError(f"--memory-size: {error} is not a whole number of patches or all") from None
    overclustering = tuple(parse_grid(clusters, "--clusters", int))  # bad values fail before torch loads
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.dense import protocol as dense_protocol
    from vicregl_cli.dense.config import OVERCLUSTERING, DenseConfig

    config = DenseConfig(
        dataset=dataset, data_root=data, protocol=protocol,
        memory_sizes=sizes or DenseConfig.memory_sizes, k=k, temperature=temperature,
        passes=passes, augment=augment, input_size=input_size, stage=stage, dilate=dilate,
        clusters=overclustering or OVERCLUSTERING,
        kmeans_iterations=kmeans_iterations, search=search, batch_size=batch_size, num_workers=workers,
        query_chunk=query_chunk, memory_chunk=memory_chunk, recalibrate_bn=bn_recalibration,
        bn_batches=bn_batches, seed=seed, device=run.device,
    )  # fmt: skip
    dense_protocol.run_protocol(config, resolve_weights(weights, backbone, seed), out, run)
