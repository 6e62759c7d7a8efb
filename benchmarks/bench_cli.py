"""How long the command line takes to answer: `vicregl --help`, `vicregl knn --help` and an argument error,
each a fresh process (median of a few runs), side by side with `python -c "import torch"`; the goal is an
answer in under 1 s, i.e. no protocol code (torch, torchvision) imported before a command runs.

    python benchmarks/bench_cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VICREGL = "import sys; sys.argv[0] = 'vicregl'; from vicregl_cli.cli import main; main()"  # `vicregl`
CASES = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "vicregl --help": ["-c", VICREGL, "--help"],
    "vicregl knn --help": ["-c", VICREGL, "knn", "--help"],
    "vicregl knn --k abc (missing options)": ["-c", VICREGL, "knn", "--k", "abc"],
    "vicregl knn ... --k abc (bad value)": ["-c", VICREGL, "knn", "--weights", "random", "--data", "d",
                                            "--out", "o", "--k", "abc"],
}


def wall_time(arguments: list[str]) -> float:
    """Seconds one fresh interpreter takes to run `arguments` to its exit (output discarded)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")]))}  # fmt: skip
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], env=environment, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Runs per case (the median is shown)")
    args = parser.parse_args()
    medians = {name: statistics.median(wall_time(arguments) for _ in range(args.runs))
               for name, arguments in CASES.items()}  # fmt: skip
    torch_import = medians['python -c "import torch"']
    print(f"{'command':40s} {'median s':>9s} {'/ import torch':>15s}   ({args.runs} runs each)")
    for name, seconds in medians.items():
        print(f"{name:40s} {seconds:9.2f} {seconds / torch_import:15.2f}")


if __name__ == "__main__":
    main()
