"""The `vicregl` command line: each subcommand (vicregl_cli.commands) parses its options, resolves the weights
once, and calls one plain-Python module (a protocol's plan + the sweep runner, or pretraining)."""

import importlib

import typer

from vicregl_cli.commands.app import app
from vicregl_cli.errors import UserError

COMMAND_MODULES = ("pretrain", "evaluate", "transfer", "tools")  # registration order = `vicregl --help` order
for module in COMMAND_MODULES:
    importlib.import_module(f"vicregl_cli.commands.{module}")

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: bad user input prints one clear line and exits 1, without a traceback."""
    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
