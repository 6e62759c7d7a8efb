"""The `vicregl` command line: each subcommand parses its options, then calls one plain-Python module."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="VICRegL pretraining and the downstream evaluations of the VICReg / VICRegL papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
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
    device: str = typer.Option("auto", help="auto, cuda or cpu"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan; train nothing"),
    no_resume: bool = typer.Option(False, "--no-resume", help="Refuse to resume (error if OUT has one)"),
    slurm: bool = typer.Option(False, "--slurm", help="Submit through submitit (requeued on pre-emption)"),
    nodes: int = typer.Option(1, help="--slurm: nodes"),
    gpus_per_node: int = typer.Option(8, help="--slurm: GPUs (= tasks) per node"),
    partition: str = typer.Option("", help="--slurm: partition"),
    time: int = typer.Option(4320, "--time", help="--slurm: time limit in minutes"),
    cpus_per_task: int = typer.Option(10, help="--slurm: CPU cores per task (data loading)"),
) -> None:
    """Pretrain a backbone with VICRegL (VICReg when alpha = 1)."""
    import sys

    from vicregl_cli.pretrain.config import load_config

    overrides = {key: value for key, value in locals().items()
                 if key not in ("config", "device", "dry_run", "no_resume", "slurm", "nodes", "gpus_per_node",
                                "partition", "time", "cpus_per_task", "sys", "load_config")}
    settings = load_config(config, overrides)
    if slurm:
        from vicregl_cli.pretrain.slurm import SlurmRequest, submit

        request = SlurmRequest(nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, time_min=time,
                               cpus_per_task=cpus_per_task)
        job = submit(settings, request)
        typer.echo(f"submitted job {job.job_id}; run folder {settings.out} (logs in {job.paths.folder})")
        return
    from vicregl_cli.pretrain import engine

    if dry_run:
        engine.print_summary(engine.dry_run(settings, device=device), settings)
        return
    try:
        result = engine.train(settings, no_resume=no_resume, device=device, command_line=sys.argv)
    except engine.TrainingInterrupted as stopped:
        typer.echo(str(stopped), err=True)
        raise typer.Exit(code=128 + stopped.signum) from None
    except engine.NonFiniteLoss as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"pretrained steps {result.start_step}..{result.end_step} of {result.total_steps}; "
               f"weights in {result.out / 'backbone.pth'}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def knn(
    ctx: typer.Context,
    weights: str = typer.Option(..., help="Weights file (backbone.pth, checkpoint.pth, release) or 'random'"),
    data: Path = typer.Option(..., help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Run folder: result.json"),
    backbone: str = typer.Option(None, help="Registry name; default: the name stored in the weights file"),
    k: list[str] = typer.Option(None, "--k", help="Neighbour counts, one pass: --k 20 200 (default)"),
    temperature: float = typer.Option(0.07, help="Votes weighted exp(cos / T)"),
    image_size: int = typer.Option(224, help="Centre-crop side"),
    resize: int = typer.Option(256, help="Short side before the centre crop"),
    batch_size: int = typer.Option(256, help="Extraction batch size per process"),
    workers: int = typer.Option(8, help="Data-loading processes"),
    chunk_size: int = typer.Option(256, help="Queries per similarity tile"),
    train_chunk_size: int = typer.Option(131072, help="Train features per similarity tile (0: all at once)"),
    cache_dir: Path = typer.Option(None, help="Feature cache (default: ~/.cache/vicregl/features)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write cached features"),
    bn_recalibration: bool = typer.Option(None, "--bn-recalibration/--no-bn-recalibration",
                                          help="Re-estimate BatchNorm statistics on train images "
                                          "(default: on for --weights random only)"),
    bn_batches: int = typer.Option(100, help="Batches for the BatchNorm re-estimation"),
    seed: int = typer.Option(0, help="Random init and BatchNorm-sample seed"),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)"),
) -> None:
    """Weighted k-NN classification on frozen pooled features (every k in one pass; top-1 / top-5)."""
    from vicregl_cli.evaluate.features import default_cache_dir
    from vicregl_cli.evaluate.knn import KnnConfig, run_knn
    from vicregl_cli.sweep import parse_grid

    ks = parse_grid([*(k or []), *ctx.args], "--k", int) or [20, 200]
    config = KnnConfig(
        data=data, out=out, weights=weights, backbone=backbone, ks=ks, temperature=temperature,
        image_size=image_size, resize=resize, batch_size=batch_size, num_workers=workers,
        chunk_size=chunk_size, train_chunk_size=train_chunk_size or None,
        cache_dir=None if no_cache else cache_dir or default_cache_dir(),
        recalibrate_bn=bn_recalibration, bn_batches=bn_batches, seed=seed, device=device,
    )
    run_knn(config)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def linear(
    ctx: typer.Context,
    weights: str = typer.Option(..., help="Weights file (backbone.pth, checkpoint.pth, release) or 'random'"),
    data: Path = typer.Option(..., help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Sweep folder: one run folder per lr (result.json), summary.json"),
    backbone: str = typer.Option(None, help="Registry name; default: the name stored in the weights file"),
    lr: list[str] = typer.Option(None, "--lr", help="lr grid: --lr 30 10 1 0.3 0.1 0.03 0.01 (default)"),
    epochs: int = typer.Option(100),
    batch_size: int = typer.Option(256, help="Total batch size over all processes"),
    weight_decay: float = typer.Option(1e-6),
    cached: bool = typer.Option(False, "--cached", help="Deviation: train every lr at once on cached "
                                "centre-crop features (no augmentation)"),
    image_size: int = typer.Option(224, help="Crop side (train RandomResizedCrop, val centre crop)"),
    resize: int = typer.Option(256, help="Val short side before the centre crop"),
    min_scale: float = typer.Option(0.08, help="RandomResizedCrop minimum scale (reference code 0.08)"),
    workers: int = typer.Option(8, help="Data-loading processes per training process"),
    cache_dir: Path = typer.Option(None, help="Feature cache (default: ~/.cache/vicregl/features)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write cached features"),
    bn_recalibration: bool = typer.Option(None, "--bn-recalibration/--no-bn-recalibration",
                                          help="Re-estimate BatchNorm statistics on train images "
                                          "(default: on for --weights random only)"),
    bn_batches: int = typer.Option(100, help="Batches for the BatchNorm re-estimation"),
    seed: int = typer.Option(0, help="Head init, batch order, random init seed"),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)"),
    slurm: bool = typer.Option(False, "--slurm", help="Run each lr as its own SLURM job (submitit)"),
    partition: str = typer.Option(None, help="--slurm: partition"),
    nodes: int = typer.Option(1, help="--slurm: nodes per job"),
    gpus_per_node: int = typer.Option(1, help="--slurm: GPUs (= tasks) per node"),
    cpus_per_task: int = typer.Option(10, help="--slurm: CPU cores per task"),
    mem_gb: int = typer.Option(None, help="--slurm: memory per node (GB)"),
    time: int = typer.Option(1440, "--time", help="--slurm: time limit per job in minutes"),
    account: str = typer.Option(None, help="--slurm: account"),
    slurm_cluster: str = typer.Option("slurm", help="--slurm: 'slurm', or 'local' (jobs on this machine)"),
) -> None:
    """Linear probe on frozen features, with a learning-rate sweep (or --cached: all lrs at once)."""
    from vicregl_cli.evaluate.features import default_cache_dir
    from vicregl_cli.evaluate.linear import DEFAULT_LRS, LinearConfig, run_linear
    from vicregl_cli.sweep import SlurmOptions, parse_grid

    config = LinearConfig(
        data=data, out=out, weights=weights, backbone=backbone,
        lrs=parse_grid([*(lr or []), *ctx.args], "--lr") or list(DEFAULT_LRS), epochs=epochs,
        batch_size=batch_size, weight_decay=weight_decay, image_size=image_size, resize=resize,
        min_scale=min_scale, cached=cached,
        num_workers=workers, cache_dir=None if no_cache else cache_dir or default_cache_dir(),
        recalibrate_bn=bn_recalibration, bn_batches=bn_batches, seed=seed, device=device,
    )
    options = SlurmOptions(
        partition=partition, nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
        mem_gb=mem_gb, time_min=time, account=account, cluster=slurm_cluster,
    ) if slurm else None  # fmt: skip
    run_linear(config, options)


@app.command()
def semi(
    weights: str = typer.Option(..., help="Weights file (backbone.pth, checkpoint.pth, release) or 'random'"),
    data: Path = typer.Option(..., help="Root holding train/ and val/ in ImageFolder layout"),
    out: Path = typer.Option(..., help="Sweep folder: a run folder per (backbone lr, head lr), summary.json"),
    backbone: str = typer.Option(None, help="Registry name; default: the name stored in the weights file"),
    percent: int = typer.Option(None, help="Labelled share: 1 or 10 (seeded class-balanced subset)"),
    split_file: Path = typer.Option(None, help="SimCLR split file (1percent.txt / 10percent.txt) instead"),
    lr_backbone: list[str] = typer.Option(None, help="Backbone lr grid, comma list or repeated "
                                          "(default 1 %: 0.03, 10 %: 0.01)"),
    lr_head: list[str] = typer.Option(None, help="Head lr grid, comma list or repeated (default 1 %: 0.08, "
                                      "10 %: 0.1)"),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(256, help="Total batch size over all processes"),
    image_size: int = typer.Option(224, help="Crop side (train RandomResizedCrop, val centre crop)"),
    resize: int = typer.Option(256, help="Val short side before the centre crop"),
    min_scale: float = typer.Option(0.08, help="RandomResizedCrop minimum scale (reference code 0.08)"),
    workers: int = typer.Option(8, help="Data-loading processes per training process"),
    seed: int = typer.Option(0, help="Subset, head init, batch order, random init seed"),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)"),
    slurm: bool = typer.Option(False, "--slurm", help="Run each grid point as its own SLURM job (submitit)"),
    partition: str = typer.Option(None, help="--slurm: partition"),
    nodes: int = typer.Option(1, help="--slurm: nodes per job"),
    gpus_per_node: int = typer.Option(1, help="--slurm: GPUs (= tasks) per node"),
    cpus_per_task: int = typer.Option(10, help="--slurm: CPU cores per task"),
    mem_gb: int = typer.Option(None, help="--slurm: memory per node (GB)"),
    time: int = typer.Option(1440, "--time", help="--slurm: time limit per job in minutes"),
    account: str = typer.Option(None, help="--slurm: account"),
    slurm_cluster: str = typer.Option("slurm", help="--slurm: 'slurm', or 'local' (jobs on this machine)"),
) -> None:
    """Semi-supervised fine-tuning on 1 % or 10 % of the labels (grid over backbone and head lrs)."""
    from vicregl_cli.evaluate.semi import SemiConfig, run_semi
    from vicregl_cli.sweep import SlurmOptions, parse_grid

    config = SemiConfig(
        data=data, out=out, weights=weights, backbone=backbone, percent=percent, split_file=split_file,
        lrs_backbone=parse_grid(lr_backbone, "--lr-backbone") or None,
        lrs_head=parse_grid(lr_head, "--lr-head") or None, epochs=epochs, batch_size=batch_size,
        image_size=image_size, resize=resize, min_scale=min_scale, num_workers=workers, seed=seed,
        device=device,
    )
    options = SlurmOptions(
        partition=partition, nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
        mem_gb=mem_gb, time_min=time, account=account, cluster=slurm_cluster,
    ) if slurm else None  # fmt: skip
    run_semi(config, options)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def segment(
    ctx: typer.Context,
    weights: str = typer.Option(..., help="Weights (backbone.pth, checkpoint.pth, release file) or 'random'"),
    dataset: str = typer.Option(..., help="voc, voc-aug, cityscapes or ade20k (configs/segment/*.py)"),
    data_root: Path = typer.Option(..., help="Dataset root, e.g. VOCdevkit/VOC2012"),
    out: Path = typer.Option(..., help="Sweep folder: one run folder per lr, summary.json"),
    backbone: str = typer.Option(None, help="Registry name; default: the name stored in the weights file"),
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
    seed: int = typer.Option(0, help="mmengine randomness seed"),
    slurm: bool = typer.Option(False, "--slurm", help="Run each lr as its own SLURM job (submitit)"),
    nodes: int = typer.Option(1, help="--slurm: nodes per job"),
    gpus_per_node: int = typer.Option(4, help="--slurm: GPUs (= tasks) per node"),
    partition: str = typer.Option(None, help="--slurm: partition"),
    time: int = typer.Option(1440, "--time", help="--slurm: time limit per job in minutes"),
) -> None:
    """Semantic segmentation transfer (linear / FCN heads) on mmsegmentation, with a learning-rate sweep."""
    import os

    from vicregl_cli.sweep import SlurmOptions, parse_grid
    from vicregl_cli.transfer.mmseg import segment as run_segment
    from vicregl_cli.transfer.mmseg_config import SegmentSettings

    lr_values, options = list(lr or []), list(cfg_options or [])
    for extra in ctx.args:  # `--lr 0.1 0.05` / `--cfg-options a=1 b=2`: values with "=" are cfg options
        (options if "=" in extra else lr_values).append(extra)
    lrs = parse_grid(lr_values, "--lr")
    if slurm:
        processes = nodes * gpus_per_node
    elif export_only:
        processes = gpus
    else:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
    settings = SegmentSettings(
        dataset=dataset, data_root=data_root, protocol=protocol, frozen=frozen,
        backbone=backbone, weights=None if weights == "random" else Path(weights),
        iters=iters, batch_size=batch_size, crop_size=crop_size, processes=processes, workers=workers,
        seed=seed, cfg_options=options,
    )
    slurm_options = (
        SlurmOptions(partition=partition, nodes=nodes, gpus_per_node=gpus_per_node, time_min=time)
        if slurm else None
    )
    run_segment(settings, lrs or None, out, export_only=export_only, slurm=slurm_options)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def detect(
    ctx: typer.Context,
    dataset: str = typer.Option(..., help="voc (one VOC folder: train -> val), voc0712, coco, coco-10pct"),
    data_root: Path = typer.Option(..., help="VOC folder, VOCdevkit (voc0712) or COCO root"),
    out: Path = typer.Option(..., help="Output: sweep folder (one run per lr), or the .pkl + config"),
    weights: str = typer.Option(..., help="Backbone weights (any format the registry reads) or random"),
    backbone: str = typer.Option(None, help="Registry name; default: the name stored in the weights file"),
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
    device: str = typer.Option("auto", help="torchvision: cuda, cpu or auto"),
    seed: int = typer.Option(0, help="torchvision: init, batch order and flip seed"),
) -> None:
    """Object detection transfer (Faster R-CNN C4) on detectron2 or the embedded torchvision engine."""
    from vicregl_cli.sweep import parse_grid
    from vicregl_cli.transfer.detectron2 import run_detect
    from vicregl_cli.transfer.tv_detection import DetectionSettings

    train_sizes = tuple(parse_grid([min_sizes] if min_sizes else [], "--min-sizes", int)) or None
    settings = DetectionSettings(
        batch_size=batch_size, min_sizes=train_sizes,
        test_size=test_size, max_size=max_size, rois_per_image=rois_per_image,
        rpn_batch_per_image=rpn_batch_per_image, proposals_train=proposals_train,
        proposals_test=proposals_test,
        precise_bn_iters=precise_bn_iters, workers=workers, device=device, seed=seed,
    )  # fmt: skip
    result = run_detect(
        backbone=backbone, weights=None if weights == "random" else Path(weights), dataset=dataset,
        data_root=data_root, out=out, engine=engine,
        lrs=parse_grid([*(lr or []), *ctx.args], "--lr"), settings=settings, iters=iters,
        export_only=export_only, num_gpus=num_gpus,
    )  # fmt: skip
    if export_only:
        typer.echo(f"wrote {result.weights} ({result.num_tensors} tensors) and {result.config}")
        typer.echo(f"train: python -m vicregl_cli.transfer.detectron2_train --config {result.config} "
                   f"--num-gpus {num_gpus}")  # fmt: skip


@app.command()
def synth(
    out: Path = typer.Option(..., help="Output folder (gets classification/ and VOC2012/)"),
    num_train: int = typer.Option(8000, help="Training images (each written to both layouts)"),
    num_val: int = typer.Option(2000, help="Validation images"),
    image_size: int = typer.Option(96, help="Image side in pixels"),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same bytes"),
    workers: int = typer.Option(2, help="Processes drawing images (the output does not depend on it)"),
) -> None:
    """Write the synthetic dataset (ImageFolder + VOC layouts)."""
    from vicregl_cli.data.synthetic import generate

    generate(out, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, workers=workers)
    typer.echo(f"wrote {num_train} + {num_val} images of {image_size}x{image_size} to {out}")


@app.command()
def backbones() -> None:
    """List the backbone registry: parameters (no classifier), representation size, stage widths."""
    from rich.console import Console
    from rich.table import Table

    from vicregl_cli.backbones import BACKBONES, parameter_count

    table = Table(title="vicregl backbones (output stride 32; parameters without classifier)")
    table.add_column("name", no_wrap=True)
    for column in ("parameters", "representation", "stage widths"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, spec in BACKBONES.items():
        widths = "-".join(str(width) for width in spec.stage_widths)
        table.add_row(name, f"{parameter_count(name) / 1e6:.2f} M", str(spec.representation_size), widths)
    Console().print(table)


@app.command()
def report(
    paths: list[Path] = typer.Argument(..., help="result.json / summary.json files, or folders to search"),
    format: str = typer.Option("table", "--format", help="table (rich), md (markdown) or csv"),
    metric: str = typer.Option(None, help="Metric that picks the best row (default: each record's first)"),
    title: str = typer.Option("results", help="Table title"),
    output: Path = typer.Option(None, help="Write md / csv here instead of printing it"),
) -> None:
    """Print or export the results of finished evaluation runs (the best row marked)."""
    from vicregl_cli.errors import UserError
    from vicregl_cli.report import default_metric, print_table, read_results, to_csv, to_markdown

    if format not in ("table", "md", "csv"):
        raise UserError(f"--format must be table, md or csv, got {format!r}")
    records = read_results(paths)
    metric = metric or default_metric(records)
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
    from vicregl_cli.errors import UserError

    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
