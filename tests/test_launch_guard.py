"""SLURM without srun: a multi-task allocation entered by a batch script stops at once; srun steps and
single-task allocations keep working."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vicregl_cli import distributed
from vicregl_cli.data.synthetic import generate
from vicregl_cli.errors import UserError

BATCH_STEP = "4294967291"  # Slurm's id of the batch script's step (0xfffffffb): not an srun step


def test_srun_step_gives_the_steps_ranks():
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_STEP_ID": "0",
           "SLURM_STEP_NUM_TASKS": "8", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu[1-2]"}  # fmt: skip
    launch = distributed.read_launch_env(env)
    assert (launch.rank, launch.local_rank, launch.world_size, launch.launcher) == (3, 3, 8, "slurm")
    assert (launch.master_addr, launch.master_port) == ("gpu1", 20042)
    old_name = {**env, "SLURM_STEPID": env.pop("SLURM_STEP_ID")}  # the pre-2.x spelling
    assert distributed.read_launch_env(old_name).world_size == 8


def test_one_task_srun_step_inside_a_larger_allocation_is_one_process():
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_STEP_ID": "2", "SLURM_STEP_NUM_TASKS": "1"}
    assert distributed.read_launch_env(env).launcher == "single"


def test_single_task_allocation_without_srun_is_one_process():
    for env in ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, {"SLURM_JOB_ID": "7"}, {}):
        assert distributed.read_launch_env(env).launcher == "single"


@pytest.mark.parametrize("step", [None, BATCH_STEP])
def test_several_tasks_without_srun_is_an_error_naming_srun(step):
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_JOB_ID": "42"}
    if step is not None:
        env["SLURM_STEP_ID"] = step
    with pytest.raises(UserError, match=r"SLURM_NTASKS=8.*not started by srun.*srun vicregl"):
        distributed.read_launch_env(env)


def test_torchrun_inside_a_multi_task_allocation_is_torchrun():
    env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "5",
           "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}  # fmt: skip
    launch = distributed.read_launch_env(env)
    assert (launch.launcher, launch.world_size, launch.rank) == ("torchrun", 16, 5)


def test_a_batch_script_without_srun_stops_within_seconds(tmp_path):
    """A real process (what `vicregl knn` / `pretrain` do first): without the guard it would wait for 7
    ranks that never start, until the timeout below fails the test."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLURM_") and key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}  # fmt: skip
    env.update(SLURM_NTASKS="8", SLURM_PROCID="0", SLURM_JOB_ID="42", SLURM_JOB_NODELIST="localhost")
    generate(tmp_path / "synth", num_train=24, num_val=12, image_size=32, workers=1)
    code = "from vicregl_cli.cli import main; main()"
    arguments = ["knn", "--weights", "random", "--backbone", "resnet18_small",
                 "--data", str(tmp_path / "synth" / "classification"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-cache", "--image-size", "32", "--resize", "32", "--workers", "0"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *arguments], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    elapsed = time.perf_counter() - started
    assert done.returncode == 1, done.stderr
    assert "error: SLURM allocated 8 tasks" in done.stderr and "srun vicregl" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 60
