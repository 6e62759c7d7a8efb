"""The command line answers without the protocol code: importing it, every subcommand's --help and argument
errors load neither torch nor torchvision (what made `vicregl --help` take seconds; benchmarks/bench_cli.py
measures the time). Each check runs in a fresh interpreter, since this test process has imported torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "mmseg", "mmengine", "numpy")


def heavy_modules_after(code: str) -> dict:
    """Run `code` (it sets `result`, a dict) in a fresh interpreter; `result` comes back with the heavy
    modules the run loaded."""
    heavy = f"[name for name in {HEAVY!r} if name in sys.modules]"
    report = f"import json, sys; print(json.dumps({{**result, 'heavy': {heavy}}}))"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    program = [sys.executable, "-c", f"{code}\n{report}"]
    done = subprocess.run(program, env=environment, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_command_line_loads_no_protocol_code():
    assert heavy_modules_after("import vicregl_cli.cli\nresult = {}") == {"heavy": []}


def test_every_help_and_an_argument_error_load_no_protocol_code():
    code = """
import typer.main
from typer.testing import CliRunner
from vicregl_cli.cli import app
names = sorted(typer.main.get_command(app).commands)
runner = CliRunner()
codes = {name: runner.invoke(app, [name, "--help"]).exit_code for name in [*names, "--help"]}
bad_k = runner.invoke(app, ["knn", "--weights", "random", "--data", "d", "--out", "o", "--k", "abc"])
result = {"names": names, "codes": codes, "bad_k": str(bad_k.exception)}
"""
    result = heavy_modules_after(code)
    assert len(result["names"]) >= 13 and "knn" in result["names"]
    assert set(result["codes"].values()) == {0}
    assert result["bad_k"] == "--k: 'abc' is not an integer"
    assert result["heavy"] == []
