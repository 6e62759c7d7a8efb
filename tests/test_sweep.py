"""The sweep runner: one result.json per point, finished points skipped, SLURM path via submitit."""

import json
import os
import sys
from pathlib import Path

import pytest

from vicregl_cli.errors import UserError
from vicregl_cli.options import RunOptions, SlurmOptions
from vicregl_cli.sweep import SweepPoint, run_sweep

CALLS: list[str] = []


def score_point(point: SweepPoint) -> dict:
    """A trivial picklable run (no torch): accuracy a known function of lr; leaves its pid and the torch
    modules its process imported in its folder."""
    CALLS.append(point.name)
    point.folder.mkdir(parents=True, exist_ok=True)
    (point.folder / "pid.txt").write_text(str(os.getpid()))
    torch_modules = sorted(name for name in sys.modules if name.split(".")[0] == "torch")[:1]
    (point.folder / "modules.json").write_text(json.dumps(torch_modules))
    return {"top1": 100.0 - abs(point.params["lr"] - 1.0)}


def score_together(point: SweepPoint) -> dict:
    """A grouped point: every member's metrics from one call."""
    CALLS.append(point.name)
    return {member.name: score_point(member) for member in point.members}


def interrupted_after_first(point: SweepPoint) -> dict:
    if CALLS:
        raise KeyboardInterrupt
    return score_point(point)


def sweep(out, points, run_point, title="toy", slurm=None, dry_run=False):
    options = RunOptions(dry_run=dry_run, slurm=slurm)
    return run_sweep(points, run_point, out_dir=out, title=title, metric="top1", options=options)


POINTS = [SweepPoint(f"lr={lr:g}", "toy", {"lr": lr}, dataset="toy-data") for lr in (0.1, 1.0, 10.0)]


def test_interrupted_sweep_reruns_only_the_unfinished_points(tmp_path):
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, POINTS, interrupted_after_first)
    assert CALLS == ["lr=0.1"]
    assert (tmp_path / "lr=0.1" / "result.json").is_file()
    assert not (tmp_path / "lr=1" / "result.json").exists()

    CALLS.clear()
    records = sweep(tmp_path, POINTS, score_point)
    assert CALLS == ["lr=1", "lr=10"]
    assert [record["run"] for record in records] == ["lr=0.1", "lr=1", "lr=10"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"] == "lr=1"
    assert summary["metric"] == "top1"
    assert [run["metrics"]["top1"] for run in summary["runs"]] == pytest.approx([99.1, 100.0, 91.0])

    CALLS.clear()
    sweep(tmp_path, POINTS, score_point)
    assert CALLS == []


def test_repeated_or_unsafe_point_names_are_rejected_before_running(tmp_path):
    CALLS.clear()
    with pytest.raises(UserError, match="repeats"):
        sweep(tmp_path, [POINTS[0], POINTS[0]], score_point)
    with pytest.raises(UserError, match="folder names"):
        sweep(tmp_path, [SweepPoint("a/b", "toy", {"lr": 1.0})], score_point)
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
    records = sweep(tmp_path / "sweep", points, score_point, title="toy slurm", slurm=options)
    assert CALLS == []  # nothing ran in this process
    pids = {(tmp_path / "sweep" / point.name / "pid.txt").read_text() for point in points}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [run["run"] for run in summary["runs"]] == ["lr=0.1", "lr=1"]
    assert summary["best"] == "lr=1"
    assert [record["metrics"]["top1"] for record in records] == pytest.approx([99.1, 100.0])
    modules = [json.loads((tmp_path / "sweep" / point.name / "modules.json").read_text()) for point in points]
    assert modules == [[], []]  # the jobs stayed light: no torch import


def test_a_grouped_point_records_one_run_per_member_and_reruns_only_unfinished_members(tmp_path):
    members = tuple(SweepPoint(f"cached_lr={lr:g}", "toy", {"lr": lr}) for lr in (0.1, 1.0, 10.0))
    group = SweepPoint("cached", "toy", {}, members=members)
    CALLS.clear()
    records = sweep(tmp_path, [group], score_together)
    assert CALLS == ["cached", "cached_lr=0.1", "cached_lr=1", "cached_lr=10"]
    assert [record["run"] for record in records] == ["cached_lr=0.1", "cached_lr=1", "cached_lr=10"]
    assert [record["metrics"]["top1"] for record in records] == pytest.approx([99.1, 100.0, 91.0])
    assert json.loads((tmp_path / "summary.json").read_text())["best"] == "cached_lr=1"
    (tmp_path / "cached_lr=10" / "result.json").unlink()
    CALLS.clear()
    sweep(tmp_path, [group], score_together)
    assert CALLS == ["cached", "cached_lr=10"]  # the group ran again with its one unfinished member


def test_dry_run_prints_every_point_and_the_slurm_job_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import submitit

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run submitted a job")

    monkeypatch.setattr(submitit.AutoExecutor, "submit", refuse)
    monkeypatch.setattr(submitit.AutoExecutor, "__init__", refuse)
    CALLS.clear()
    slurm = SlurmOptions(partition="gpu", gpus_per_node=4, time_min=90, account="ssl")
    assert sweep(tmp_path / "out", POINTS, score_point, slurm=slurm, dry_run=True) == []
    printed = capsys.readouterr().out
    assert CALLS == [] and not (tmp_path / "out").exists()
    assert all(point.name in printed for point in POINTS)
    assert "would submit 3 SLURM job(s)" in printed and "'slurm_partition': 'gpu'" in printed
    assert "'timeout_min': 90" in printed and "'slurm_account': 'ssl'" in printed
