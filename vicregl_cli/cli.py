"""The `vicregl` command line: each subcommand parses its options, resolves the weights once, and calls one
plain-Python module (a protocol's plan + the sweep runner, or pretraining)."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vicregl_cli.backbones import BACKBONES, parameter_count, resolve_weights
from vicregl_cli.cli_options import with_feature_options, with_run_options
from vicregl_cli.data.synthetic import check_arguments, generate
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate import knn as knn_protocol
from vicregl_cli.evaluate import linear as linear_protocol
from vicregl_cli.evaluate import semi as semi_protocol
from vicregl_cli.options import FeatureOptions, RunOptions
from vicregl_cli.pretrain import loop, plan, slurm
from vicregl_cli.pretrain.config import FIELDS, load_config
from vicregl_cli.report import default_metric, print_table, read_results, to_csv, to_markdown
from vicregl_cli.sweep import parse_grid, run_protocol
from vicregl_cli.transfer import detect as detect_protocol
from vicregl_cli.transfer import segment as segmentation
from vicregl_cli.transfer.detectron2_run import launch_command
from vicregl_cli.transfer.segment_plan import SegmentSettings
from vicregl_cli.transfer.tv_detection import DetectionSettings

app = typer.Typer(
    help="VICRegL pretraining and the downstream evaluations of the VICReg / VICRegL papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
WEIGHTS_HELP = "Weights file (backbone.pth, checkpoint.pth, release, torchvision) or 'random'"
BACKBONE_HELP = "Registry name; default: the name stored in the weights file"
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": False}


@app.command()
@with_run_options(gpus_per_node=8, time_min=4320)
def pretrain(
    config: Path = typer.Option(None, "--config", help="YAML preset (configs/pretrain/); flags override it"),
    data: str = typer.Option(None, help="ImageFolder root: DATA/<class>/<image>"),
    out: str = typer.Option(None, help="Run folder: checkpoint.pth, backbone.pth, stats.jsonl, config.yaml"),
    backbone: str = typer.Option(None, help="Registry name (vicregl backbones), e.g. resnet50"),
    alpha: float = typer.Option(None, help="alpha * global + (1 - alpha) * local; 1 = VICReg"),
    mlp: str = typer.Option(None, help="Expander widths, e.g. 8192-8192-8192"),
    maps_mlp: str = typer.Option(None, help="Per-location projector widths, e.g. 512-512-512"),
    num_matches: str = typer.Option(None, help="Kept matches per direction, e.g. 20,4"),
    l2_all_matches: bool = typer.Option(None, "--l2-all-matches/--filter-l2-matches",
                                        help="Keep every feature match (reference code) or filter (paper)"),
    crop_sizes: str = typer.Option(None, help="Crop size per group, e.g. 224,96"),
    crop_counts: str = typer.Option(None, help="Views per group, e.g. 2,6"),
    crop_min_scales: str = typer.Option(None, help="Min crop scale per group, e.g. 0.4,0.08"),
    crop_max_scales: str = typer.Option(None, help="Max crop scale per group, e.g. 1,0.4"),
    ignore_flips: bool = typer.Option(None, "--ignore-flips/--mirror-flips",
                                      help="Positions ignore flips (reference code) or mirror them (paper)"),
    blur_probs: str = typer.Option(None, help="Gaussian blur probability of even, odd crops (1,0.1)"),
    solarize_probs: str = typer.Option(None, help="Solarisation probability of even, odd crops (0,0.2)"),
    optimizer: str = typer.Option(None, help="lars (ResNets) or adamw (ConvNeXts)"),
    base_lr: float = typer.Option(None, help="Peak lr = base_lr x batch_size / 256"),
    weight_decay: float = typer.Option(None),
    epochs: int = typer.Option(None),
    warmup_epochs: int = typer.Option(None),
    batch_size: int = typer.Option(None, help="Global batch size (all processes together)"),
    precision: str = typer.Option(None, help="bf16, fp16 or fp32 (CPU runs fp32)"),
    num_workers: int = typer.Option(None, help="Data-loading processes per training process"),
    seed: int = typer.Option(None),
    checkpoint_every: int = typer.Option(None, help="Epochs between checkpoints"),
    log_every: int = typer.Option(None, help="Steps between stats.jsonl lines"),
    probe: bool = typer.Option(None, "--probe/--no-probe", help="Online linear probe on detached features"),
    drop_path_rate: float = typer.Option(None, help="ConvNeXt stochastic depth"),
    no_resume: bool = typer.Option(False, "--no-resume", help="Refuse to resume (error if OUT has one)"),
    *,
    run: RunOptions,
) -> None:
    """Pretrain a backbone with VICRegL (VICReg when alpha = 1)."""
    overrides = {key: value for key, value in locals().items() if key in FIELDS}
    settings = load_config(config, overrides)
    if run.dry_run:
        if run.slurm is not None:
            slurm.print_job(settings, run.slurm)
        else:
            plan.print_summary(plan.dry_run(settings, device=run.device), settings)
        return
    if run.slurm is not None:
        job = slurm.submit(settings, run.slurm, device=run.device)
        typer.echo(f"submitted job {job.job_id}; run folder {settings.out} (logs in {job.paths.folder})")
        return
    try:
        result = loop.train(settings, no_resume=no_resume, device=run.device, command_line=sys.argv)
    except loop.TrainingInterrupted as stopped:
        typer.echo(str(stopped), err=True)
        raise typer.Exit(code=128 + stopped.signum) from None
    except loop.NonFiniteLoss as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"pretrained steps {result.start_step}..{result.end_step} of {result.total_steps}; "
               f"weights in {result.out / 'backbone.pth'}")


@app.command(context_settings=EXTRA_ARGS)
@with_run_options()
@with_feature_options()
def knn(
    ctx: typer.Context,
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(..., help="Root holding train/ and val/ in ImageFolder layout"),
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
    config = knn_protocol.KnnConfig(
        data=data, ks=tuple(parse_grid([*(k or []), *ctx.args], "--k", int) or (20, 200)),
        temperature=temperature, batch_size=batch_size, chunk_size=chunk_size,
        train_chunk_size=train_chunk_size or None, device=run.device, **asdict(features),
    )  # fmt: skip
    run_protocol(knn_protocol, config, resolve_weights(weights, backbone, seed), out, run)


@app.command(context_settings=EXTRA_ARGS)
@with_run_options()
@with_feature_options()
def linear(
    ctx: typer.Context,
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(..., help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Sweep folder: one run folder per lr (result.json), summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    lr: list[str] = typer.Option(None, "--lr", help="lr grid (default: 30 10 1 0.3 0.1 0.03 0.02 0.01)"),
    epochs: int = typer.Option(100),
    batch_size: int = typer.Option(256, help="Total batch size over all processes"),
    weight_decay: float = typer.Option(1e-6),
    cached: bool = typer.Option(False, "--cached", help="Deviation: train every lr at once on cached "
                                "centre-crop features (no augmentation)"),
    min_scale: float = typer.Option(0.08, help="RandomResizedCrop minimum scale (reference code 0.08)"),
    seed: int = typer.Option(0, help="Head init, batch order, random init seed"),
    *,
    features: FeatureOptions,
    run: RunOptions,
) -> None:
    """Linear probe on frozen features, with a learning-rate sweep (or --cached: all lrs at once)."""
    config = linear_protocol.LinearConfig(
        data=data, lrs=tuple(parse_grid([*(lr or []), *ctx.args], "--lr") or linear_protocol.DEFAULT_LRS),
        epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, min_scale=min_scale, cached=cached,
        seed=seed, device=run.device, **asdict(features),
    )  # fmt: skip
    run_protocol(linear_protocol, config, resolve_weights(weights, backbone, seed), out, run)


@app.command()
@with_run_options()
def semi(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    data: Path = typer.Option(..., help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Sweep folder: a run folder per (backbone lr, head lr), summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    percent: int = typer.Option(None, help="Labelled share: 1 or 10 (seeded class-balanced subset)"),
    split_file: Path = typer.Option(None, help="SimCLR split file (1percent.txt / 10percent.txt) instead"),
    lr_backbone: list[str] = typer.Option(None, help="Backbone lr grid, comma list or repeated "
                                          "(default 1 %: 0.03, 10 %: 0.01)"),
    lr_head: list[str] = typer.Option(None, help="Head lr grid, comma list or repeated (default 1 %: 0.08, "
                                      "10 %: 0.1)"),
    grid: bool = typer.Option(False, "--grid", help=f"VICReg B.2's grid search: backbone lrs "
                              f"{semi_protocol.GRID_BACKBONE} x head lrs {semi_protocol.GRID_HEAD}, where "
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
    config = semi_protocol.SemiConfig(
        data=data, percent=percent, split_file=split_file,
        lrs_backbone=tuple(parse_grid(lr_backbone, "--lr-backbone")) or None,
        lrs_head=tuple(parse_grid(lr_head, "--lr-head")) or None, grid=grid, epochs=epochs,
        batch_size=batch_size, image_size=image_size, resize=resize, min_scale=min_scale, num_workers=workers,
        seed=seed, device=run.device,
    )  # fmt: skip
    run_protocol(semi_protocol, config, resolve_weights(weights, backbone, seed), out, run)


@app.command(context_settings=EXTRA_ARGS)
@with_run_options(gpus_per_node=4)
def segment(
    ctx: typer.Context,
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    dataset: str = typer.Option(..., help="voc, voc-aug, cityscapes or ade20k (vicregl_cli/configs/segment)"),
    data_root: Path = typer.Option(..., help="Dataset root, e.g. VOCdevkit/VOC2012"),
    out: Path = typer.Option(..., help="Sweep folder: one run folder per lr, summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    protocol: str = typer.Option("linear", help="linear (BN + 1x1 conv) or fcn (mmseg's FCNHead, ResNet)"),
    frozen: bool = typer.Option(True, "--frozen/--finetune", help="Freeze weights and BN statistics"),
    lr: list[str] = typer.Option(None, help="Learning rates, --lr 0.1 0.05 (a sweep); default: papers' grid"),
    iters: int = typer.Option(None, help="Training iterations (default: the dataset's schedule, 40k / 160k)"),
    batch_size: int = typer.Option(None, help="Total batch over all processes (default 16; Cityscapes 8)"),
    crop_size: int = typer.Option(None, help="Square crop side (default 512, shrunk for tiny images)"),
    cfg_options: list[str] = typer.Option(None, help="mmengine overrides: --cfg-options a.b=1 c=[1,2]"),
    export_only: bool = typer.Option(
        False, "--export-only", help="Write config.py + backbone.pth per lr and print mmseg's commands"
    ),
    gpus: int = typer.Option(1, help="--export-only: GPUs the config is written for (batch split, SyncBN)"),
    workers: int = typer.Option(4, help="Data-loading processes per training process"),
    seed: int = typer.Option(0, help="mmengine randomness seed; random init seed"),
    *,
    run: RunOptions,
) -> None:
    """Semantic segmentation transfer (linear / FCN heads) on mmsegmentation, with a learning-rate sweep."""
    lr_values, options = list(lr or []), list(cfg_options or [])
    for extra in ctx.args:  # `--lr 0.1 0.05` / `--cfg-options a=1 b=2`: values with "=" are cfg options
        (options if "=" in extra else lr_values).append(extra)
    if export_only and run.slurm is not None:
        raise UserError("--export-only writes the configs here and trains nothing: drop --slurm")
    if run.slurm is not None:
        processes = run.slurm.tasks
    elif export_only:
        processes = gpus
    else:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
    settings = SegmentSettings(
        dataset=dataset, data_root=data_root, protocol=protocol, frozen=frozen,
        lrs=tuple(parse_grid(lr_values, "--lr")) or None, iters=iters, batch_size=batch_size,
        crop_size=crop_size, processes=processes, workers=workers, seed=seed, device=run.device,
        cfg_options=tuple(options),
    )  # fmt: skip
    resolved = resolve_weights(weights, backbone, seed)
    if run.dry_run or not export_only:
        run_protocol(segmentation, settings, resolved, out, run)
        return
    for config_path in segmentation.export_points(segmentation.plan(settings, resolved), out):
        typer.echo(f"# {config_path.parent.name}")
        for command in segmentation.train_commands(config_path, processes):
            typer.echo(command)


@app.command(context_settings=EXTRA_ARGS)
@with_run_options()
def detect(
    ctx: typer.Context,
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    dataset: str = typer.Option(..., help="voc (one VOC folder: train -> val), voc0712, coco, coco-10pct"),
    data_root: Path = typer.Option(..., help="VOC folder, VOCdevkit (voc0712) or COCO root"),
    out: Path = typer.Option(..., help="Output: sweep folder (one run per lr), or the .pkl + config"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    engine: str = typer.Option(None, help="detectron2 or torchvision (default: detectron2 when installed)"),
    lr: list[str] = typer.Option(None, "--lr", help="Learning rates (a sweep): --lr 0.02 0.01 (0.02 x B/16)"),
    iters: int = typer.Option(None, help="Iterations (24k VOC, 90k COCO); lr steps scale with it"),
    batch_size: int = typer.Option(16, help="Images per iteration, all GPUs together"),
    export_only: bool = typer.Option(False, "--export-only", help="Write backbone.pkl + config only"),
    num_gpus: int = typer.Option(8, help="detectron2: GPUs per machine for the launcher"),
    min_sizes: str = typer.Option(None, help="torchvision: train shorter sides, e.g. 480,512,...,800 (auto)"),
    test_size: int = typer.Option(None, help="torchvision: test shorter side (800; auto)"),
    max_size: int = typer.Option(None, help="torchvision: longer-side cap (default 1333)"),
    rois_per_image: int = typer.Option(None, help="torchvision: RoIs sampled per image (default 512)"),
    rpn_batch_per_image: int = typer.Option(None, help="torchvision: anchors sampled per image (256)"),
    proposals_train: int = typer.Option(None, help="torchvision: proposals kept after NMS, training (2000)"),
    proposals_test: int = typer.Option(None, help="torchvision: proposals kept after NMS, test (1000)"),
    precise_bn_iters: int = typer.Option(200, help="torchvision: PreciseBN batches before evaluation"),
    workers: int = typer.Option(2, help="torchvision: data-loading processes"),
    seed: int = typer.Option(0, help="Random init; torchvision: head init, batch order and flip seed"),
    *,
    run: RunOptions,
) -> None:
    """Object detection transfer (Faster R-CNN C4) on detectron2 or the embedded torchvision engine."""
    settings = DetectionSettings(
        min_sizes=tuple(parse_grid([min_sizes] if min_sizes else [], "--min-sizes", int)) or None,
        test_size=test_size, max_size=max_size, rois_per_image=rois_per_image,
        rpn_batch_per_image=rpn_batch_per_image, proposals_train=proposals_train,
        proposals_test=proposals_test, precise_bn_iters=precise_bn_iters, workers=workers, seed=seed,
    )  # fmt: skip
    config = detect_protocol.DetectConfig(
        dataset=dataset, data_root=data_root, engine=engine,
        lrs=tuple(parse_grid([*(lr or []), *ctx.args], "--lr")) or None, iters=iters, batch_size=batch_size,
        num_gpus=num_gpus, settings=settings, device=run.device,
    )  # fmt: skip
    resolved = resolve_weights(weights, backbone, seed)
    if export_only and run.slurm is not None:
        raise UserError("--export-only writes the .pkl and config here and trains nothing: drop --slurm")
    if run.dry_run or not export_only:
        run_protocol(detect_protocol, config, resolved, out, run)
        return
    result = detect_protocol.export(config, resolved, out)
    typer.echo(f"wrote {result.weights} ({result.num_tensors} tensors) and {result.config}")
    typer.echo("train: " + " ".join(launch_command(result.config, num_gpus)))


@app.command()
def synth(
    out: Path = typer.Option(..., help="Output folder (gets classification/ and VOC2012/)"),
    num_train: int = typer.Option(8000, help="Training images (each written to both layouts)"),
    num_val: int = typer.Option(2000, help="Validation images"),
    image_size: int = typer.Option(96, help="Image side in pixels"),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same bytes"),
    workers: int = typer.Option(2, help="Processes drawing images (the output does not depend on it)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the arguments, print what would be written"),
) -> None:
    """Write the synthetic dataset (ImageFolder + VOC layouts)."""
    if dry_run:
        check_arguments(out, num_train, num_val, image_size, workers)
        typer.echo(f"would write {num_train} + {num_val} images of {image_size}x{image_size} (seed {seed})"
                   f" to {out}/classification and {out}/VOC2012; dry run: nothing was written")
        return
    generate(out, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, workers=workers)
    typer.echo(f"wrote {num_train} + {num_val} images of {image_size}x{image_size} to {out}")


@app.command()
def backbones() -> None:
    """List the backbone registry: parameters (no classifier), representation size, stage widths."""
    table = Table(title="vicregl backbones (parameters without classifier)")
    table.add_column("name", no_wrap=True)
    for column in ("parameters", "representation", "stage widths", "output stride"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, spec in BACKBONES.items():
        widths = "-".join(str(width) for width in spec.stage_widths)
        table.add_row(
            name, f"{parameter_count(name) / 1e6:.2f} M", str(spec.representation_size), widths,
            str(spec.output_stride),
        )  # fmt: skip
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # never squeezed off a TTY


@app.command()
def report(
    paths: list[Path] = typer.Argument(..., help="result.json / summary.json files, or folders to search"),
    format: str = typer.Option("table", "--format", help="table (rich), md (markdown) or csv"),
    metric: str = typer.Option(None, help="Metric that picks the best row (default: each record's first)"),
    title: str = typer.Option("results", help="Table title"),
    output: Path = typer.Option(None, help="Write md / csv here instead of printing it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read the records, print what would be shown"),
) -> None:
    """Print or export the results of finished evaluation runs (the best row marked)."""
    if format not in ("table", "md", "csv"):
        raise UserError(f"--format must be table, md or csv, got {format!r}")
    records = read_results(paths)
    metric = metric or default_metric(records)
    if dry_run:
        typer.echo(f"would show {len(records)} record(s) ranked by {metric} as {format}"
                   + (f" into {output}" if output else "") + "; dry run: nothing was written")
        return
    if format == "table":
        print_table(records, metric, title)
        return
    text = to_markdown(records, metric) if format == "md" else to_csv(records, metric)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


def main() -> None:
    """Console entry point: bad user input prints one clear line and exits 1, without a traceback."""
    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
