"""`vicregl knn`, `linear` and `semi`: the classification protocols on frozen or fine-tuned backbones."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from vicregl_cli.cli_options import with_feature_options, with_run_options
from vicregl_cli.commands.app import BACKBONE_HELP, DATA_FLAGS, WEIGHTS_HELP, app, multi_value
from vicregl_cli.options import FeatureOptions, RunOptions
from vicregl_cli.protocol_defaults import SEMI_GRID_BACKBONE, SEMI_GRID_HEAD
from vicregl_cli.sweep import parse_grid, run_protocol


@app.command(
    cls=multi_value("--k"),
    epilog="Example: vicregl knn --weights runs/r50/backbone.pth --data imagenet --out runs/r50-knn",
)
@with_run_options()
@with_feature_options()
def knn(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(..., *DATA_FLAGS, help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Sweep folder: knn/result.json, summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    k: list[str] = typer.Option(None, "--k", help="Neighbour counts, one pass: --k 20 200 (default)"),
    temperature: float = typer.Option(0.07, help="Votes weighted exp(cos / T)"),
    batch_size: int = typer.Option(256, help="Extraction batch size per process"),
    chunk_size: int = typer.Option(256, help="Queries per similarity tile"),
    train_chunk_size: int = typer.Option(131072, help="Train features per similarity tile (0: all at once)"),
    seed: int = typer.Option(0, help="Random init and BatchNorm-sample seed"),
    *,
    features: FeatureOptions,
    run: RunOptions,
) -> None:
    """Weighted k-NN classification on frozen pooled features (every k in one pass; top-1 / top-5)."""
    ks = tuple(parse_grid(k, "--k", int) or (20, 200))  # a bad value fails before torch loads
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.evaluate import knn as knn_protocol

    config = knn_protocol.KnnConfig(
        data=data, ks=ks,
        temperature=temperature, batch_size=batch_size, chunk_size=chunk_size,
        train_chunk_size=train_chunk_size or None, device=run.device, **asdict(features),
    )  # fmt: skip
    run_protocol(knn_protocol, config, resolve_weights(weights, backbone, seed), out, run)


@app.command(
    cls=multi_value("--lr", "--milestones"),
    epilog="Example: vicregl linear --weights runs/r50/backbone.pth --data imagenet "
    "--out runs/r50-linear --lr 0.3 0.1",
)
@with_run_options()
@with_feature_options()
def linear(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(..., *DATA_FLAGS, help="train/, val/ (ImageFolder) or the --dataset layout"),
    out: Path = typer.Option(..., help="Sweep folder: one run folder per lr (result.json), summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    preset: str = typer.Option(None, help="imagenet (default), places205 or inat18 (VICReg B.3): the "
                               "dataset reader and optimiser settings; every flag given explicitly beats it"),
    dataset: str = typer.Option(None, help="Reader: imagefolder (train/ val/), places205 (list files), "
                                "inat18 (train2018.json, val2018.json); default: the preset's"),
    train_list: Path = typer.Option(None, help="places205: train list instead of "
                                    "DATA/trainvalsplit_places205/train_places205.csv"),
    val_list: Path = typer.Option(None, help="places205: val list instead of "
                                  "DATA/trainvalsplit_places205/val_places205.csv"),
    lr: list[str] = typer.Option(None, "--lr", help="lr grid (default imagenet: 30 10 1 0.3 0.1 0.03 0.02 "
                                 "0.01; places205: 0.003; inat18: 0.005)"),
    epochs: int = typer.Option(None, help="Default imagenet 100, places205 28, inat18 84"),
    batch_size: int = typer.Option(None, help="Total batch size over all processes (default 256)"),
    weight_decay: float = typer.Option(None, help="Default imagenet 1e-6, places205 / inat18 1e-4"),
    schedule: str = typer.Option(None, help="cosine (per epoch, to 0) or step (x --gamma at each of "
                                 "--milestones); default: the preset's (imagenet cosine, others step)"),
    milestones: list[str] = typer.Option(None, "--milestones", help="Epochs of the step decays: 4 8 12 or "
                                         "4,8,12 (places205: 4 8 12; inat18: 24 48 72)"),
    gamma: float = typer.Option(None, help="Step decay factor (default 0.1)"),
    cached: bool = typer.Option(False, "--cached", help="Deviation: train every lr at once on cached "
                                "centre-crop features (no augmentation)"),
    min_scale: float = typer.Option(0.08, help="RandomResizedCrop minimum scale (reference code 0.08)"),
    seed: int = typer.Option(0, help="Head init, batch order, random init seed"),
    *,
    features: FeatureOptions,
    run: RunOptions,
) -> None:
    """Linear probe on frozen features, with a learning-rate sweep (or --cached: all lrs at once); presets
    for the ImageNet protocol and VICReg's Places205 / iNaturalist 2018 transfers."""
    lrs = tuple(parse_grid(lr, "--lr")) or None  # bad values fail before torch loads
    decays = tuple(parse_grid(milestones, "--milestones", int)) or None
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.evaluate import linear as linear_protocol
    from vicregl_cli.evaluate import linear_presets

    settings = linear_presets.preset_settings(
        preset, dataset=dataset, lrs=lrs, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay,
        schedule=schedule, milestones=decays, gamma=gamma,
    )  # fmt: skip
    config = linear_protocol.LinearConfig(
        data=data, preset=preset or "imagenet", train_list=train_list, val_list=val_list, min_scale=min_scale,
        cached=cached, seed=seed, device=run.device, **settings, **asdict(features),
    )  # fmt: skip
    run_protocol(linear_protocol, config, resolve_weights(weights, backbone, seed), out, run)


@app.command(
    cls=multi_value("--lr-backbone", "--lr-head"),
    epilog="Example: vicregl semi --weights runs/r50/backbone.pth --data imagenet --percent 1 "
    "--out runs/r50-semi",
)
@with_run_options()
def semi(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(..., *DATA_FLAGS, help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Sweep folder: a run folder per (backbone lr, head lr), summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    percent: int = typer.Option(None, help="Labelled share: 1 or 10 (seeded class-balanced subset)"),
    split_file: Path = typer.Option(None, help="SimCLR split file (1percent.txt / 10percent.txt) instead"),
    lr_backbone: list[str] = typer.Option(None, help="Backbone lr grid: --lr-backbone 0.01 0.03 "
                                          "(default 1 %: 0.03, 10 %: 0.01)"),
    lr_head: list[str] = typer.Option(None, help="Head lr grid: --lr-head 0.08 0.1 (default 1 %: 0.08, "
                                      "10 %: 0.1)"),
    grid: bool = typer.Option(False, "--grid", help=f"VICReg B.2's grid search: backbone lrs "
                              f"{SEMI_GRID_BACKBONE} x head lrs {SEMI_GRID_HEAD}, where "
                              "--lr-backbone / --lr-head are not given (default: the paper's pair)"),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(256, help="Total batch size over all processes"),
    image_size: int = typer.Option(224, help="Crop side (train RandomResizedCrop, val centre crop)"),
    resize: int = typer.Option(256, help="Val short side before the centre crop"),
    min_scale: float = typer.Option(0.08, help="RandomResizedCrop minimum scale (reference code 0.08)"),
    workers: int = typer.Option(8, help="Data-loading processes per training process"),
    seed: int = typer.Option(0, help="Subset, head init, batch order, random init seed"),
    *,
    run: RunOptions,
) -> None:
    """Semi-supervised fine-tuning on 1 % or 10 % of the labels (grid over backbone and head lrs)."""
    lrs_backbone = tuple(parse_grid(lr_backbone, "--lr-backbone")) or None  # bad values: before torch loads
    lrs_head = tuple(parse_grid(lr_head, "--lr-head")) or None
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.evaluate import semi as semi_protocol

    config = semi_protocol.SemiConfig(
        data=data, percent=percent, split_file=split_file, lrs_backbone=lrs_backbone, lrs_head=lrs_head,
        grid=grid, epochs=epochs,
        batch_size=batch_size, image_size=image_size, resize=resize, min_scale=min_scale, num_workers=workers,
        seed=seed, device=run.device,
    )  # fmt: skip
    run_protocol(semi_protocol, config, resolve_weights(weights, backbone, seed), out, run)
