"""The sweep runner: one result.json per point, finished points skipped, SLURM path via submitit."""

import json
import os
import sys
from pathlib import Path

import pytest

from vicregl_cli.errors import UserError
from vicregl_cli.sweep import SlurmOptions, SweepPoint, run_sweep

CALLS: list[str] = []


def score_point(point: SweepPoint, run_dir: Path) -> dict:
    """A trivial picklable run (no torch): accuracy a known function of lr; leaves its pid in its folder."""
    CALLS.append(point.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pid.txt").write_text(str(os.getpid()))
    lr = point.params["lr"]
    return {
        "protocol": "toy",
        "backbone": "none",
        "weights": {"path": "random", "sha256": None},
        "dataset": "toy-data",
        "params": {"lr": lr},
        "metrics": {"top1": 100.0 - abs(lr - 1.0)},
        "wall_time_s": 0.0,
        "versions": {},
        "modules": sorted(name for name in sys.modules if name.split(".")[0] == "torch")[:1],
    }


def interrupted_after_first(point: SweepPoint, run_dir: Path) -> dict:
    if CALLS:
        raise KeyboardInterrupt
    return score_point(point, run_dir)


POINTS = [SweepPoint(f"lr={lr:g}", {"lr": lr}) for lr in (0.1, 1.0, 10.0)]


def test_interrupted_sweep_reruns_only_the_unfinished_points(tmp_path):
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tmp_path, POINTS, interrupted_after_first, metric="top1", title="toy")
    assert CALLS == ["lr=0.1"]
    assert (tmp_path / "lr=0.1" / "result.json").is_file()
    assert not (tmp_path / "lr=1" / "result.json").exists()

    CALLS.clear()
    records = run_sweep(tmp_path, POINTS, score_point, metric="top1", title="toy")
    assert CALLS == ["lr=1", "lr=10"]
    assert [record["run"] for record in records] == ["lr=0.1", "lr=1", "lr=10"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"] == "lr=1"
    assert summary["metric"] == "top1"
    assert [run["metrics"]["top1"] for run in summary["runs"]] == pytest.approx([99.1, 100.0, 91.0])

    CALLS.clear()
    run_sweep(tmp_path, POINTS, score_point, metric="top1", title="toy")
    assert CALLS == []


def test_repeated_or_unsafe_point_names_are_rejected_before_running(tmp_path):
    CALLS.clear()
    with pytest.raises(UserError, match="repeats"):
        run_sweep(tmp_path, [POINTS[0], POINTS[0]], score_point, metric="top1", title="toy")
    with pytest.raises(UserError, match="folder names"):
        run_sweep(tmp_path, [SweepPoint("a/b", {"lr": 1.0})], score_point, metric="top1", title="toy")
    assert CALLS == []


def test_slurm_path_runs_each_point_as_its_own_job(tmp_path, monkeypatch):
    # The local executor starts a fresh Python per job, which must be able to import this test module.
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    CALLS.clear()
    options = SlurmOptions(
        cluster="local", gpus_per_node=0, cpus_per_task=1, time_min=5, folder=tmp_path / "logs"
    )
    points = POINTS[:2]
    records = run_sweep(
        tmp_path / "sweep", points, score_point, metric="top1", title="toy slurm", slurm=options
    )
    assert CALLS == []  # nothing ran in this process
    pids = {(tmp_path / "sweep" / point.name / "pid.txt").read_text() for point in points}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [run["run"] for run in summary["runs"]] == ["lr=0.1", "lr=1"]
    assert summary["best"] == "lr=1"
    assert [record["metrics"]["top1"] for record in records] == pytest.approx([99.1, 100.0])
    assert [record["modules"] for record in records] == [[], []]  # the jobs stayed light: no torch import
