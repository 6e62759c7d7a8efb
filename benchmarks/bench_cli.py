"""How long the command line takes to answer: `vicregl --help`, `vicregl knn --help` and argument errors,
each a fresh process (median of a few runs, wall and CPU time), side by side with `python -c "import torch"`;
the goal is an answer in under 1 s, i.e. no protocol code (torch, torchvision) imported before a command runs.

    python benchmarks/bench_cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
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


def timed(arguments: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh interpreter running `arguments` to its exit
    (output discarded); the CPU time barely moves when other processes share the cores, the wall time does."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")]))}  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], env=environment, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Runs per case (the median is shown)")
    args = parser.parse_args()
    medians = {}
    for name, arguments in CASES.items():
        walls, cpus = zip(*(timed(arguments) for _ in range(args.runs)), strict=True)
        medians[name] = statistics.median(walls), statistics.median(cpus)
    torch_wall, torch_cpu = medians['python -c "import torch"']
    print(f"{'command':40s} {'wall s':>7s} {'/ torch':>8s} {'CPU s':>7s} {'/ torch':>8s}   "
          f"(medians of {args.runs} runs; / torch: ratio to `import torch` in the same run)")
    for name, (wall, cpu) in medians.items():
        print(f"{name:40s} {wall:7.2f} {wall / torch_wall:8.2f} {cpu:7.2f} {cpu / torch_cpu:8.2f}")


if __name__ == "__main__":
    main()
