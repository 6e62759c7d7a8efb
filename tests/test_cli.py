"""The command line: every subcommand is listed."""

import pytest
from typer.testing import CliRunner

from vicregl_cli.cli import app

SUBCOMMANDS = [
    "pretrain", "linear", "knn", "semi", "svm", "segment", "detect", "export", "matches", "synth",
    "backbones", "report", "presets",
]  # fmt: skip


def test_help_lists_every_subcommand():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    listed = [name for name in SUBCOMMANDS if f" {name} " in result.output]
    assert listed == SUBCOMMANDS


def test_a_run_stopped_by_a_signal_exits_128_plus_signal_with_the_resume_hint(monkeypatch, capsys, tmp_path):
    import signal

    from vicregl_cli import cli
    from vicregl_cli.interrupts import TrainingInterrupted

    def stopped_run() -> None:
        raise TrainingInterrupted(signal.SIGUSR2, 7, tmp_path / "checkpoint.pth")

    monkeypatch.setattr(cli, "app", stopped_run)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 128 + signal.SIGUSR2
    assert capsys.readouterr().err.strip() == (
        f"stopped by SIGUSR2 after step 7; checkpoint saved to {tmp_path / 'checkpoint.pth'}; "
        "run the same command again to resume"
    )


def test_multi_value_options_take_every_value_that_follows_them():
    import typer

    from vicregl_cli.commands.app import multi_value

    seen = {}
    toy = typer.Typer()

    @toy.command(cls=multi_value("--lr", "--cfg-options"))
    def run(lr: list[str] = typer.Option(None), cfg_options: list[str] = typer.Option(None),
            epochs: int = typer.Option(1)) -> None:  # fmt: skip
        seen.update(lr=lr, cfg_options=cfg_options, epochs=epochs)

    arguments = ["--lr", "0.1", "0.05", "--epochs", "3", "--cfg-options", "a.b=1", "c=[1,2]", "--lr", "1e-3"]
    assert CliRunner().invoke(toy, arguments).exit_code == 0
    assert seen == {"lr": ["0.1", "0.05", "1e-3"], "cfg_options": ["a.b=1", "c=[1,2]"], "epochs": 3}
    stray = CliRunner().invoke(toy, ["--epochs", "3", "4"])  # a value after a one-value option: an error
    assert stray.exit_code == 2 and "unexpected extra argument" in stray.output.lower()
