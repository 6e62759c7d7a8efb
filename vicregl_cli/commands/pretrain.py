"""`vicregl pretrain`: VICRegL (VICReg when alpha = 1) on one machine, under torchrun, or through SLURM.

Every PretrainConfig field is a flag here, generated from the dataclass with its help text (a new field needs
no edit here), and can also be given as KEY=VALUE after the options:
`vicregl pretrain --config demo epochs=3 cov_coeff=2`.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing

import typer

from vicregl_cli.cli_options import with_options, with_run_options
from vicregl_cli.commands.app import DATA_FLAGS, app
from vicregl_cli.errors import UserError
from vicregl_cli.options import RunOptions
from vicregl_cli.pretrain.config import PretrainConfig, load_config, parse_assignments, type_name

PANEL = "Pretraining settings (or KEY=VALUE)"
BOOL_FLAGS = {  # the two switches whose off-side has a name of its own
    "l2_all_matches": "--l2-all-matches/--filter-l2-matches",
    "ignore_flips": "--ignore-flips/--mirror-flips",
}
ALIASES = {"data": DATA_FLAGS[1:]}  # --data-root: the dataset root's alias in every command
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
    help_text = f"{spec.metadata['help']} ({kind}, {shown})"
    flags = (declaration, *ALIASES.get(spec.name, ()))
    option = typer.Option(None, *flags, help=help_text, rich_help_panel=PANEL, show_default=False)
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def config_flags() -> list[inspect.Parameter]:
    """A flag for every PretrainConfig field, in the dataclass's order."""
    return [_flag(spec) for spec in dataclasses.fields(PretrainConfig)]


def _given(values: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in values.items() if value is not None}


@app.command(
    epilog="Example: vicregl pretrain --config resnet50_alpha0.75 --data imagenet/train --out runs/r50"
)
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
    from vicregl_cli.pretrain import loop, plan, slurm

    pairs = parse_assignments(assignments or [])
    twice = sorted(set(pairs) & set(flags))
    if twice:
        raise UserError(f"{', '.join(twice)} given both as a flag and as KEY=VALUE: give each once")
    settings = load_config(config, {**flags, **pairs})
    from vicregl_cli.pretrain_hooks import monitor_hooks  # wires evaluate/'s k-NN monitor into the loop

    hooks = monitor_hooks(settings)  # opens and checks --monitor-data, also in a dry run
    if run.dry_run:
        if run.slurm is not None:
            slurm.print_job(settings, run.slurm)
        else:
            plan.print_summary(plan.dry_run(settings, device=run.device), settings)
        return
    if run.slurm is not None:
        job = slurm.submit(settings, run.slurm, device=run.device, make_hooks=monitor_hooks)
        typer.echo(f"submitted job {job.job_id}; run folder {settings.out} (logs in {job.paths.folder})")
        return
    try:
        result = loop.train(
            settings, no_resume=no_resume, device=run.device, hooks=hooks, command_line=sys.argv
        )
    except loop.NonFiniteLoss as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"pretrained steps {result.start_step}..{result.end_step} of {result.total_steps}; "
               f"weights in {result.out / 'backbone.pth'}")
