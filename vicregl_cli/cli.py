"""The `vicregl` command line: each subcommand (vicregl_cli.commands) parses its options, resolves the weights
once, and calls one plain-Python module (a protocol's plan + the sweep runner, or pretraining)."""

import importlib
import pkgutil

import typer

from vicregl_cli import commands
from vicregl_cli.commands.app import app
from vicregl_cli.errors import UserError
from vicregl_cli.interrupts import TrainingInterrupted

HELP_ORDER = (
    "pretrain", "evaluate", "svm", "transfer", "dense", "export", "matches", "pca", "tools", "presets"
)


def _help_rank(module: str) -> tuple[int, str]:
    return (HELP_ORDER.index(module) if module in HELP_ORDER else len(HELP_ORDER), module)


for _module in sorted((info.name for info in pkgutil.iter_modules(commands.__path__)), key=_help_rank):
    importlib.import_module(f"vicregl_cli.commands.{_module}")  # registers its subcommands on `app`

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: bad user input prints one clear line and exits 1, a run stopped by a signal
    (checkpoint saved) says how to resume and exits 128 + the signal number, a Ctrl-C that stopped at once
    exits 130; no traceback."""
    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
    except TrainingInterrupted as stopped:  # pretraining or a detection run saved its checkpoint
        typer.echo(str(stopped), err=True)
        raise SystemExit(128 + stopped.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        typer.echo("interrupted by Ctrl-C: stopped at once (training resumes from its last checkpoint)",
                   err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
