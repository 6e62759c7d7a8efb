"""`vicregl pretrain`: VICRegL (VICReg when alpha = 1) on one machine, under torchrun, or through SLURM.

Every PretrainConfig field is a flag here, generated from the dataclass (a new field needs no edit here), and
can also be given as KEY=VALUE after the options: `vicregl pretrain --config demo epochs=3 cov_coeff=2`.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing

import typer

from vicregl_cli.cli_options import with_options, with_run_options
from vicregl_cli.commands.app import app
from vicregl_cli.errors import UserError
from vicregl_cli.options import RunOptions
from vicregl_cli.pretrain import loop, plan, slurm
from vicregl_cli.pretrain.config import PretrainConfig, load_config, parse_assignments, type_name

PANEL = "Pretraining settings (or KEY=VALUE)"
FLAG_HELP = {  # optional: a field without an entry still gets its flag, with its type and default
    "data": "ImageFolder root: DATA/<class>/<image>",
    "out": "Run folder: checkpoint.pth, backbone.pth, stats.jsonl, config.yaml",
    "backbone": "Registry name (vicregl backbones), e.g. resnet50",
    "drop_path_rate": "ConvNeXt stochastic depth",
    "mlp": "Expander widths, e.g. 8192-8192-8192",
    "maps_mlp": "Per-location projector widths, e.g. 512-512-512",
    "alpha": "alpha * global + (1 - alpha) * local; 1 = VICReg",
    "num_matches": "Kept matches per direction, e.g. 20,4",
    "l2_all_matches": "Keep every feature match (reference code) or filter (paper)",
    "inv_coeff": "Invariance coefficient (lambda)",
    "var_coeff": "Variance coefficient (mu)",
    "cov_coeff": "Covariance coefficient (nu)",
    "crop_sizes": "Crop size per group, e.g. 224,96",
    "crop_counts": "Views per group, e.g. 2,6",
    "crop_min_scales": "Min crop scale per group, e.g. 0.4,0.08",
    "crop_max_scales": "Max crop scale per group, e.g. 1,0.4",
    "ignore_flips": "Positions ignore flips (reference code) or mirror them (paper)",
    "blur_probs": "Gaussian blur probability of even, odd crops (1,0.1)",
    "solarize_probs": "Solarisation probability of even, odd crops (0,0.2)",
    "optimizer": "lars (ResNets) or adamw (ConvNeXts)",
    "base_lr": "Peak lr = base_lr x batch_size / 256",
    "end_lr_ratio": "Final lr of the cosine schedule, as a fraction of the peak",
    "batch_size": "Global batch size (all processes together)",
    "precision": "bf16, fp16 or fp32 (CPU runs fp32)",
    "num_workers": "Data-loading processes per training process",
    "checkpoint_every": "Epochs between checkpoints",
    "log_every": "Steps between stats.jsonl lines",
    "probe": "Online linear probe on detached features",
    "monitor_data": "Online k-NN monitor: ImageFolder root with train/ and val/ (top-1@20 in stats.jsonl)",
    "monitor_every": "Epochs between online k-NN evaluations",
}
BOOL_FLAGS = {  # the two switches whose off-side has a name of its own
    "l2_all_matches": "--l2-all-matches/--filter-l2-matches",
    "ignore_flips": "--ignore-flips/--mirror-flips",
}
FLAG_TYPES = (bool, int, float)  # typed flags; every other field is read as text and coerced by load_config


def _flag(spec: dataclasses.Field) -> inspect.Parameter:
    """One field's option: bool / int / float typed, others as text (lists: '224,96'); None = not given."""
    hints = typing.get_type_hints(PretrainConfig)
    annotation = hints[spec.name] if hints[spec.name] in FLAG_TYPES else str
    dashed = "--" + spec.name.replace("_", "-")
    declaration = BOOL_FLAGS.get(spec.name, f"{dashed}/--no-{dashed[2:]}") if annotation is bool else dashed
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    kind = type_name(spec.name).replace("[", " of ").replace("]", "")  # brackets would read as rich markup
    shown = f"default {default}" if default not in ("", None) else "no default"
    help_text = f"{FLAG_HELP.get(spec.name, spec.name.replace('_', ' '))} ({kind}, {shown})"
    option = typer.Option(None, declaration, help=help_text, rich_help_panel=PANEL, show_default=False)
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def config_flags() -> list[inspect.Parameter]:
    """A flag for every PretrainConfig field, in the dataclass's order."""
    return [_flag(spec) for spec in dataclasses.fields(PretrainConfig)]


def _given(values: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in values.items() if value is not None}


@app.command()
@with_run_options(gpus_per_node=8, time_min=4320)
@with_options("flags", config_flags(), _given)
def pretrain(
    assignments: list[str] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="Overrides after the options, e.g. epochs=100 batch_size=1024",
        show_default=False,
    ),
    config: str = typer.Option(
        None, "--config", help="A packaged preset's name (vicregl presets), e.g. resnet50_alpha0.75, or a "
        "YAML file; flags and KEY=VALUE override it",
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Refuse to resume (error if OUT has one)"),
    *,
    run: RunOptions,
    flags: dict[str, object],
) -> None:
    """Pretrain a backbone with VICRegL (VICReg when alpha = 1)."""
    pairs = parse_assignments(assignments or [])
    twice = sorted(set(pairs) & set(flags))
    if twice:
        raise UserError(f"{', '.join(twice)} given both as a flag and as KEY=VALUE: give each once")
    settings = load_config(config, {**flags, **pairs})
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
    except loop.NonFiniteLoss as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"pretrained steps {result.start_step}..{result.end_step} of {result.total_steps}; "
               f"weights in {result.out / 'backbone.pth'}")
