"""The command line: every subcommand is listed."""

from typer.testing import CliRunner

from vicregl_cli.cli import app

SUBCOMMANDS = ["pretrain", "linear", "knn", "semi", "segment", "detect", "synth", "backbones", "report"]


def test_help_lists_all_nine_subcommands():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    listed = [name for name in SUBCOMMANDS if f" {name} " in result.output]
    assert listed == SUBCOMMANDS
