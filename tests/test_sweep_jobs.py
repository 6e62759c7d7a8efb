"""Sweep job records: a re-run skips points whose recorded SLURM job is still queued or running (sacct faked
through submitit's watcher) and submits the others again."""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager

import pytest
from submitit.slurm.slurm import SlurmInfoWatcher

from vicregl_cli import sweep
from vicregl_cli.options import RunOptions, SlurmOptions
from vicregl_cli.sweep import JOBS_FILE, SweepPoint, run_sweep

POINTS = [SweepPoint(f"lr={lr:g}", "toy", {"lr": lr}, dataset="toy-data") for lr in (0.1, 1.0, 10.0)]
SLURM = SlurmOptions(partition="gpu", time_min=10)


class LeftTheLoginNode(KeyboardInterrupt):
    """The user's Ctrl-C while the sweep waits for its jobs."""


class FakeJob:
    def __init__(self, job_id: str, point: SweepPoint) -> None:
        self.job_id, self.point = job_id, point

    def result(self) -> list[dict]:
        raise LeftTheLoginNode


class FakeExecutor:
    """submitit's executor as the sweep uses it; hands out job ids 1001, 1002, ..."""

    def __init__(self, submitted: list[str], job_ids: itertools.count) -> None:
        self.submitted, self.job_ids = submitted, job_ids

    @contextmanager
    def batch(self):
        yield

    def submit(self, job: sweep.PointJob) -> FakeJob:
        self.submitted.append(job.point.name)
        return FakeJob(str(next(self.job_ids)), job.point)


def toy_point(point: SweepPoint) -> dict:
    return {"top1": 100.0 - point.params["lr"]}


def test_rerun_skips_points_whose_jobs_are_still_queued_or_running(tmp_path, monkeypatch, capsys):
    submitted: list[str] = []
    job_ids = itertools.count(1001)
    monkeypatch.setattr(sweep, "make_executor", lambda *args, **kwargs: FakeExecutor(submitted, job_ids))
    options = RunOptions(slurm=SLURM)
    with pytest.raises(LeftTheLoginNode):
        run_sweep(POINTS, toy_point, out_dir=tmp_path, title="toy", metric="top1", options=options)
    assert submitted == ["lr=0.1", "lr=1", "lr=10"]
    records = json.loads((tmp_path / JOBS_FILE).read_text())
    assert {name: record["job_id"] for name, record in records.items()} == {
        "lr=0.1": "1001", "lr=1": "1002", "lr=10": "1003"}  # fmt: skip
    assert records["lr=1"]["logs"] == str(tmp_path / "slurm" / "%j")

    states = {"1001": "PENDING", "1002": "RUNNING", "1003": "CANCELLED by 0"}
    sacct_calls = []
    monkeypatch.setattr(SlurmInfoWatcher, "update", lambda self: sacct_calls.append(sorted(self._registered)))
    monkeypatch.setattr(SlurmInfoWatcher, "get_state", lambda self, job_id, mode="standard": states[job_id])
    (tmp_path / "lr=0.1").mkdir()  # a point whose job finished meanwhile is not asked about
    (tmp_path / "lr=0.1" / "result.json").write_text(json.dumps(
        {"run": "lr=0.1", "protocol": "toy", "params": {"lr": 0.1}, "metrics": {"top1": 99.9}}))  # fmt: skip
    submitted.clear()
    with pytest.raises(LeftTheLoginNode):
        run_sweep(POINTS, toy_point, out_dir=tmp_path, title="toy", metric="top1", options=options)
    assert submitted == ["lr=10"]  # lr=1 is still running as job 1002: nothing submitted for it
    assert len(sacct_calls) == 1 and {"1002", "1003"} <= set(sacct_calls[0])
    assert "job 1002 RUNNING" in capsys.readouterr().err
    records = json.loads((tmp_path / JOBS_FILE).read_text())
    assert (records["lr=1"]["job_id"], records["lr=10"]["job_id"]) == ("1002", "1004")

    submitted.clear()
    states["1004"] = "PENDING"
    run_sweep(POINTS, toy_point, out_dir=tmp_path, title="toy", metric="top1",
              options=RunOptions(dry_run=True, slurm=SLURM))  # fmt: skip
    printed = capsys.readouterr().out
    assert submitted == [] and "would submit 0 SLURM job(s)" in printed
    assert "job 1002 RUNNING (skipped)" in printed and "job 1004 PENDING (skipped)" in printed


def test_a_queued_point_is_not_run_here_either(tmp_path, monkeypatch):
    (tmp_path / JOBS_FILE).write_text(json.dumps(
        {"lr=1": {"job_id": "77", "cluster": "slurm", "logs": str(tmp_path / "slurm" / "%j")}}))  # fmt: skip
    monkeypatch.setattr(SlurmInfoWatcher, "update", lambda self: None)
    monkeypatch.setattr(SlurmInfoWatcher, "get_state", lambda self, job_id, mode="standard": "PENDING")
    records = run_sweep(POINTS, toy_point, out_dir=tmp_path, title="toy", metric="top1")
    assert [record["run"] for record in records] == ["lr=0.1", "lr=10"]
    assert not (tmp_path / "lr=1" / "result.json").exists()


def test_jobs_of_resuming_protocols_are_requeued_the_others_not(tmp_path, monkeypatch):
    import submitit

    from vicregl_cli.transfer import detect

    submitted, executors = [], []

    def executor(*args, **kwargs):
        executors.append(kwargs)
        return FakeExecutor(submitted, itertools.count(1))

    monkeypatch.setattr(sweep, "make_executor", executor)
    for resumes in (False, True):
        with pytest.raises(LeftTheLoginNode):
            run_sweep(POINTS[:1], toy_point, out_dir=tmp_path / str(resumes), title="toy", metric="top1",
                      options=RunOptions(slurm=SLURM), resumes=resumes)  # fmt: skip
    assert executors == [{}, {"max_requeues": 30, "slurm_signal_delay_s": 120}]
    assert sweep.PointJob(toy_point, POINTS[0]).checkpoint() is None
    job = sweep.PointJob(toy_point, POINTS[0], resumes=True)
    requeued = job.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function is job
    assert detect.RESUMES is True  # detection resumes from RUN/checkpoint.pth on both engines
