"""The command line: every subcommand is listed, its help ends with an example, one flag names a dataset
root everywhere, export writes to --out, and errors in the options name their fix."""

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


def _commands() -> dict:
    import typer.main

    return typer.main.get_command(app).commands


def test_every_subcommand_help_ends_with_an_example():
    runner = CliRunner()
    for name in _commands():
        output = runner.invoke(app, [name, "--help"]).output
        assert "Example: " in output, name
        after = output.rsplit("Example: ", 1)[1]
        assert after.split()[:2] == ["vicregl", name] and "─" not in after, (name, after)  # nothing after it


def test_a_dataset_root_is_data_in_every_command_and_data_root_an_alias(tmp_path, monkeypatch):
    flags = {name: option.opts for name, command in _commands().items() for option in command.params
             if option.name == "data"}  # fmt: skip
    assert set(flags) == {"pretrain", "knn", "linear", "semi", "svm", "segment", "detect", "dense"}
    assert all(opts == ["--data", "--data-root"] for opts in flags.values()), flags
    from vicregl_cli.commands import evaluate as evaluate_commands

    roots = []
    monkeypatch.setattr(evaluate_commands, "run_protocol", lambda _, config, *rest: roots.append(config.data))
    for flag in ("--data", "--data-root"):
        arguments = ["knn", "--weights", "random", "--backbone", "resnet18", flag, str(tmp_path / flag)]
        result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
    assert roots == [tmp_path / "--data", tmp_path / "--data-root"]


def test_pretrain_takes_data_root_as_its_data_and_names_the_warmup_fix(tmp_path, monkeypatch):
    from vicregl_cli.pretrain import plan

    seen = []
    monkeypatch.setattr(plan, "dry_run", lambda settings, device=None: seen.append(settings.data) or {})
    monkeypatch.setattr(plan, "print_summary", lambda summary, settings: None)
    result = CliRunner().invoke(app, ["pretrain", "--data-root", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert seen == [str(tmp_path)]
    short = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path), "epochs=1", "--dry-run"])
    assert short.exit_code == 1
    assert str(short.exception) == (
        "warmup_epochs 10 > epochs 1: add warmup_epochs=0 (no warm-up; or any value up to 1)"
    )


def test_export_writes_to_out_or_to_the_positional_given_once(tmp_path):
    base = ["export", "--weights", "random", "--backbone", "resnet18", "--to", "torchvision", "--dry-run"]
    for where in (["--out", str(tmp_path / "a.pth")], [str(tmp_path / "a.pth")]):
        result = CliRunner().invoke(app, [*base, *where])
        assert result.exit_code == 0, result.output
        assert f"as torchvision to {tmp_path / 'a.pth'}; dry run" in result.output
    for where in ([], ["--out", str(tmp_path / "a.pth"), str(tmp_path / "b.pth")]):
        result = CliRunner().invoke(app, [*base, *where])
        assert result.exit_code == 1
        assert str(result.exception) == "give the file to write once: --out FILE (or as the last argument)"
    assert list(tmp_path.iterdir()) == []


def test_a_bad_grid_value_names_what_it_must_be():
    from vicregl_cli.errors import UserError
    from vicregl_cli.sweep import parse_grid

    assert parse_grid(["0.1,0.3", "1"], "--lr") == [0.1, 0.3, 1.0]
    with pytest.raises(UserError, match=r"^--lr: 'x' is not a number$"):
        parse_grid(["0.1,x"], "--lr")
    with pytest.raises(UserError, match=r"^--k: '2.5' is not an integer$"):
        parse_grid(["20", "2.5"], "--k", int)
