"""`vicregl pretrain`: VICRegL (VICReg when alpha = 1) on one machine, under torchrun, or through SLURM."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vicregl_cli.cli_options import with_run_options
from vicregl_cli.commands.app import app
from vicregl_cli.options import RunOptions
from vicregl_cli.pretrain import loop, plan, slurm
from vicregl_cli.pretrain.config import FIELDS, load_config


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
