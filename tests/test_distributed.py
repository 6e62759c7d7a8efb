"""Launchers, sharding, gather_with_grad: two gloo processes equal one process with both halves."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vicregl_cli import distributed
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.losses import global_loss, local_loss

WORLD = 2
BATCH = 3  # per rank


def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29511"}
    launch = distributed.read_launch_env(env)
    assert (launch.rank, launch.local_rank, launch.world_size) == (3, 1, 8)
    assert (launch.master_addr, launch.master_port, launch.launcher) == ("node7", 29511, "torchrun")
    with pytest.raises(UserError, match="LOCAL_RANK"):
        distributed.read_launch_env({"RANK": "0", "WORLD_SIZE": "2"})


def test_slurm_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_STEP_ID": "0",  # started by srun (vicregl_cli.distributed.slurm_tasks)
        "SLURM_LOCALID": "5",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu-a[017-018,031],cpu1",
    }
    launch = distributed.read_launch_env(env)
    assert (launch.rank, launch.local_rank, launch.world_size, launch.launcher) == (5, 5, 16, "slurm")
    assert launch.master_addr == "gpu-a017"
    assert launch.master_port == 20000 + 123456 % 20000
    single = distributed.read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (single.world_size, single.launcher) == (1, "single")
    assert distributed.read_launch_env({}).launcher == "single"


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node12", "node12"),
        ("a1,a2", "a1"),
        ("gpu[012-015,020]", "gpu012"),
        ("c-b24-[7,9],c-b25-[1]", "c-b24-7"),
    ],
)
def test_first_slurm_host(nodelist, host):
    assert distributed.first_slurm_host(nodelist) == host


def test_shard_range_covers_every_item_once():
    for items in (0, 1, 7, 10):
        shards = [distributed.shard_range(items, r, 3) for r in range(3)]
        assert [i for shard in shards for i in shard] == list(range(items))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_single_process_needs_no_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    env = distributed.init_distributed("cpu")
    assert (env.rank, env.world_size, env.backend, env.device) == (0, 1, None, "cpu")
    assert distributed.is_main_process() and distributed.world_size() == 1
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x


def _full_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    grids = [3, 3, 2, 2]
    maps = [torch.randn(WORLD * BATCH, g * g, 8, generator=generator) for g in grids]
    positions = [torch.rand(WORLD * BATCH, g * g, 2, generator=generator) * 100 for g in grids]
    embeddings = [torch.randn(WORLD * BATCH, 12, generator=generator) for _ in grids]
    return maps, positions, embeddings


def _losses_and_grads(maps, positions, embeddings):
    maps = [m.clone().requires_grad_() for m in maps]
    embeddings = [e.clone().requires_grad_() for e in embeddings]
    local = local_loss(maps, positions, num_matches=(4, 2))
    glob = global_loss(embeddings)
    (local.total + glob.total).backward()
    return (
        torch.stack(list(local) + list(glob)).detach(),
        [m.grad for m in maps],
        [e.grad for e in embeddings],
    )


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    env = distributed.init_distributed("cpu")
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    maps, positions, embeddings = _full_batch()
    terms, map_grads, embedding_grads = _losses_and_grads(
        [m[mine] for m in maps], [p[mine] for p in positions], [e[mine] for e in embeddings]
    )
    weight = torch.arange(WORLD * 2, dtype=torch.float32).view(WORLD, 2)
    piece = torch.full((1, 2), float(rank), requires_grad=True)
    gathered = distributed.gather_with_grad(piece)
    (gathered * weight).sum().backward()
    torch.save(
        {
            "env": (env.rank, env.world_size, env.backend),
            "terms": terms,
            "maps": map_grads,
            "embeddings": embedding_grads,
            "gathered": gathered.detach(),
            "piece_grad": piece.grad,
        },
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_equal_one_process_with_both_halves(tmp_path):
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    terms, map_grads, embedding_grads = _losses_and_grads(*_full_batch())
    # the invariance terms use each rank's own samples: their mean over ranks is the one-process value
    torch.testing.assert_close(sum(result["terms"] for result in ranks) / WORLD, terms, rtol=1e-5, atol=1e-6)
    for r, result in enumerate(ranks):
        assert result["env"] == (r, WORLD, "gloo")
        assert torch.equal(result["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        # backward sums every rank's gradient of the gathered tensor: 2 ranks × weight row r
        assert torch.equal(result["piece_grad"], WORLD * torch.arange(WORLD * 2.0).view(WORLD, 2)[r : r + 1])
        # variance / covariance use the gathered batch: the same on every rank as in one process
        for term in (1, 2, 5, 6):
            torch.testing.assert_close(result["terms"][term], terms[term], rtol=1e-5, atol=1e-6)
        mine = slice(r * BATCH, (r + 1) * BATCH)
        # a rank's input gradient is world size times the one-process one (DDP's averaging removes the factor)
        for got, full in zip(result["maps"] + result["embeddings"], map_grads + embedding_grads, strict=True):
            torch.testing.assert_close(
                got / WORLD, full[mine], rtol=1e-5, atol=1e-5 * float(full.abs().max())
            )


# ---------------------------------------------------------------- GPU choice and fp16 resume, CUDA mocked


def _launch(launcher: str, local_rank: int, world_size: int) -> distributed.LaunchEnv:
    return distributed.LaunchEnv(rank=local_rank, local_rank=local_rank, world_size=world_size,
                                 master_addr="node1", master_port=29500, launcher=launcher)  # fmt: skip


def test_gpu_index_follows_the_local_rank_one_gpu_per_slurm_task_and_an_explicit_index():
    assert distributed.gpu_index(_launch("torchrun", 3, 8), None, visible=8) == 3
    assert distributed.gpu_index(_launch("slurm", 5, 8), None, visible=8) == 5  # every task sees the node's 8
    assert distributed.gpu_index(_launch("slurm", 5, 8), None, visible=1) == 0  # --gpus-per-task 1
    assert distributed.gpu_index(_launch("single", 0, 1), 1, visible=2) == 1  # --device cuda:1
    with pytest.raises(UserError, match="local rank 1 but only 1 GPUs visible"):
        distributed.gpu_index(_launch("torchrun", 1, 2), None, visible=1)  # two ranks would share a GPU
    with pytest.raises(UserError, match="local rank 2 but only 2 GPUs visible"):
        distributed.gpu_index(_launch("slurm", 2, 4), None, visible=2)
    with pytest.raises(UserError, match="--device cuda:1 names one GPU but 2 processes"):
        distributed.gpu_index(_launch("torchrun", 0, 2), 1, visible=2)


@pytest.fixture
def fake_gpus(monkeypatch):
    """`count` visible CUDA devices as torch.cuda reports them; -> the devices set_device was given."""
    chosen: list[int] = []

    def fake(count: int) -> list[int]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
                 "SLURM_STEPID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS", "SLURM_NPROCS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return fake


def test_device_cuda_n_is_honoured_for_one_process_and_refused_when_missing(fake_gpus):
    chosen = fake_gpus(2)
    env = distributed.init_distributed(distributed.resolve_device("cuda:1"))
    assert (env.device, env.world_size, chosen) == ("cuda:1", 1, [1])
    assert distributed.init_distributed("cuda").device == "cuda:0"
    with pytest.raises(UserError, match=r"--device cuda:2: only 2 GPUs are visible \(cuda:0 to cuda:1\)"):
        distributed.resolve_device("cuda:2")
    with pytest.raises(UserError, match="must be auto, cuda, cuda:N or cpu"):
        distributed.resolve_device("mps")


def test_a_slurm_task_that_sees_one_gpu_computes_on_it(fake_gpus, monkeypatch):
    chosen = fake_gpus(1)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)  # the NCCL group itself is not mocked
    monkeypatch.setattr(dist, "get_rank", lambda: 5)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    env = distributed.init_distributed("cuda")
    assert (env.rank, env.local_rank, env.world_size, env.device, chosen) == (5, 5, 8, "cuda:0", [0])
    with pytest.raises(UserError, match="--device cuda:0 names one GPU but 8 processes"):
        distributed.init_distributed("cuda:0")


def test_fp16_resumed_from_a_checkpoint_without_loss_scaling_starts_a_fresh_scaler(monkeypatch):
    from vicregl_cli.pretrain.checkpoint import restore_scaler

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # an fp16 run's scaler is enabled on a GPU
    fresh = torch.amp.GradScaler("cuda", enabled=True)
    saved_by_bf16_or_cpu = torch.amp.GradScaler("cuda", enabled=False).state_dict()
    assert saved_by_bf16_or_cpu == {}
    note = restore_scaler(fresh, saved_by_bf16_or_cpu)
    assert note.startswith("note: the checkpoint was written without fp16 loss scaling")
    assert "fresh GradScaler (scale 65536)" in note and fresh.get_scale() == 65536.0
    fp16_state = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                  "_growth_tracker": 3}  # fmt: skip
    resumed = torch.amp.GradScaler("cuda", enabled=True)
    assert restore_scaler(resumed, fp16_state) == "" and resumed.get_scale() == 1024.0
    assert restore_scaler(torch.amp.GradScaler("cuda", enabled=False), fp16_state) == ""  # fp16 -> bf16
