"""`vicregl svm`: VOC07 classification transfer with per-class linear SVMs on frozen pooled features."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from vicregl_cli.cli_options import with_feature_options, with_run_options
from vicregl_cli.commands.app import BACKBONE_HELP, DATA_FLAGS, WEIGHTS_HELP, app, multi_value
from vicregl_cli.options import FeatureOptions, RunOptions
from vicregl_cli.protocol_defaults import VISSL_COSTS, VISSL_FOLDS, VISSL_MAX_ITER
from vicregl_cli.sweep import parse_grid, run_protocol


@app.command(
    cls=multi_value("--cost"),
    epilog="Example: vicregl svm --weights runs/r50/backbone.pth --data VOCdevkit/VOC2007 --out runs/r50-svm",
)
@with_run_options()
@with_feature_options()
def svm(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(
        ..., *DATA_FLAGS, help="VOC root (VOC2007): ImageSets/Main/<class>_<split>.txt, JPEGImages/"
    ),
    out: Path = typer.Option(..., help="Sweep folder: svm/result.json, svm/per_class.json, summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    train_split: str = typer.Option("trainval", help="Split the SVMs and the cross-validation use"),
    test_split: str = typer.Option("test", help="Split the mAP is measured on"),
    cost: list[str] = typer.Option(
        None, "--cost", help=f"SVM cost grid (default VISSL's: {' '.join(f'{c:g}' for c in VISSL_COSTS)})"
    ),
    folds: int = typer.Option(VISSL_FOLDS, help="Cross-validation folds on the train split"),
    max_iter: int = typer.Option(VISSL_MAX_ITER, help="LIBLINEAR iterations per fit"),
    jobs: int = typer.Option(-1, help="Processes fitting SVMs (-1: every core)"),
    batch_size: int = typer.Option(256, help="Extraction batch size per process"),
    seed: int = typer.Option(0, help="Random init, BatchNorm sample and LIBLINEAR seed"),
    *,
    features: FeatureOptions,
    run: RunOptions,
) -> None:
    """VOC07 classification: one linear SVM per class on frozen features, cost by cross-validation; mAP."""
    costs = tuple(parse_grid(cost, "--cost") or VISSL_COSTS)  # a bad value fails before torch loads
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.evaluate import svm as svm_protocol

    config = svm_protocol.SvmConfig(
        data=data, train_split=train_split, test_split=test_split, costs=costs, folds=folds,
        max_iter=max_iter, jobs=jobs, seed=seed, batch_size=batch_size, device=run.device, **asdict(features),
    )  # fmt: skip
    run_protocol(svm_protocol, config, resolve_weights(weights, backbone, seed), out, run)
