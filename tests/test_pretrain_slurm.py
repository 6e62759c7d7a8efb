"""The --slurm path through submitit's local executor: a pre-empted job is requeued and resumes from its
checkpoint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from test_pretrain import tiny_config

from vicregl_cli.options import SlurmOptions
from vicregl_cli.pretrain.slurm import submit

submitit = pytest.importorskip("submitit")


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc; the local executor's controller starts one per task)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(train_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    config = tiny_config(train_dir, run, epochs=2)  # 3 steps per epoch, 6 in all
    options = SlurmOptions(gpus_per_node=0, time_min=60, cluster="local", folder=tmp_path / "slurm")
    job = submit(config, options)
    checkpoint = run / "checkpoint.pth"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert not job.done(), job.stderr()
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    first = torch.load(checkpoint, weights_only=True)["step"]
    assert first == 3  # the end of the first epoch
    (task,) = _children(job._process.pid)  # the local controller's one task: the training process
    os.kill(task, signal.SIGUSR2)  # what SLURM does on pre-emption (submitit's signal) to every task
    result = job.result()
    log = job.stderr() or ""
    assert "resuming" in log and "Requeued" in (job.stdout() or "") + log
    assert 4 <= result["start_step"] < 6  # the requeued task continued from the mid-epoch checkpoint...
    assert result["end_step"] == result["total_steps"] == 6  # ...and finished the run
    assert torch.load(checkpoint, weights_only=True)["step"] == 6 and (run / "backbone.pth").exists()
