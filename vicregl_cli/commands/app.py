"""The `vicregl` Typer application and the help texts its subcommands share; each module of
vicregl_cli.commands registers its subcommands on `app` (vicregl_cli.cli imports them all)."""

import typer

app = typer.Typer(
    help="VICRegL pretraining and the downstream evaluations of the VICReg / VICRegL papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
WEIGHTS_HELP = "Weights file (backbone.pth, checkpoint.pth, release, torchvision) or 'random'"
BACKBONE_HELP = "Registry name; default: the name stored in the weights file"
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": False}
