"""Process-group set-up for torchrun and SLURM, and the all-gather with gradient that the VICReg terms need.

Gradient convention of `gather_with_grad` (that of the reference code's `FullGatherLayer`): the backward
pass SUMS the gradients every rank computed for the gathered tensor and returns each rank its own slice.
Every rank computes the variance/covariance terms on the same gathered batch, so a rank's input gradient
from those terms is world_size × the one-process gradient; DistributedDataParallel AVERAGES parameter
gradients over ranks, which removes the factor. Local terms (the invariance MSE over the rank's own n of
the k·n samples) carry k × the one-process weight per sample on each rank, and the same averaging gives it
back. Net effect: k ranks × n samples under DDP give the same parameter gradients as one process with k·n
samples, while the input gradients seen on one rank are world_size × the one-process ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from vicregl_cli.errors import UserError

SPECIAL_STEP_IDS = 0xFFFFFFF0  # Slurm's batch / extern / interactive / pending steps: not started by srun


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global and node-local rank, number of processes, backend, and device."""

    rank: int
    local_rank: int
    world_size: int
    backend: str | None  # "nccl" | "gloo"; None for a single process without a process group
    device: str  # "cuda:N" (gpu_index) or "cpu": the device this process should compute on


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher's environment variables say (torchrun or SLURM), before any process group exists."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "slurm" | "single"


def is_initialized() -> bool:
    """True when a torch.distributed process group is active."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0: the process that logs, writes checkpoints and shows progress bars."""
    return rank() == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[012-015,020],cpu1" -> "gpu012"): the rendezvous address."""
    first_group = _split_top_level(nodelist)[0].strip()
    if not first_group:
        raise UserError(f"SLURM_JOB_NODELIST is empty or malformed: {nodelist!r}")
    if "[" not in first_group:
        return first_group
    prefix, _, rest = first_group.partition("[")
    inside, closing, suffix = rest.partition("]")
    first_id = inside.split(",")[0].split("-")[0]
    if not closing or not first_id.isdigit():
        raise UserError(f"cannot read the first host of SLURM_JOB_NODELIST={nodelist!r}")
    return prefix + first_id + suffix


def _split_top_level(nodelist: str) -> list[str]:
    groups, depth, start = [], 0, 0
    for position, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            groups.append(nodelist[start:position])
            start = position + 1
    groups.append(nodelist[start:])
    return groups


def _srun_step_id(environ: Mapping[str, str]) -> int | None:
    """The id of the srun step this process runs in, or None: srun sets SLURM_STEP_ID (and the older
    SLURM_STEPID) in each task it starts; a batch script, an salloc shell and the extern step have no srun
    step (Slurm's special step ids, 0xfffffff0 and up, are treated as none)."""
    text = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID", ""))
    if not text.isdigit() or int(text) >= SPECIAL_STEP_IDS:
        return None
    return int(text)


def slurm_tasks(environ: Mapping[str, str]) -> int:
    """How many processes this SLURM step runs (1 outside SLURM). Inside an srun step: the step's task count
    (SLURM_STEP_NUM_TASKS, else SLURM_NTASKS). Outside one, an allocation of several tasks means a batch
    script or salloc shell ran the command without srun: only this one process exists, so waiting for the
    others would hang forever; that is a UserError saying how to launch instead."""
    if _srun_step_id(environ) is not None:
        return int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1")))
    allocated = int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")))
    if allocated > 1:
        raise UserError(
            f"SLURM allocated {allocated} tasks (SLURM_NTASKS={allocated}) but this process was not started "
            "by srun (no SLURM_STEP_ID), so the other ranks would never start: launch one process per task "
            "with `srun vicregl ...`, or one per node with `srun --ntasks-per-node 1 torchrun "
            "--nproc-per-node GPUS ...`, or request --ntasks 1 for a single process"
        )
    return 1


def read_launch_env(environ: Mapping[str, str]) -> LaunchEnv:
    """Ranks, world size and rendezvous address from torchrun's variables, else SLURM's, else one process.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under `srun` (one task per
    GPU, as submitit launches) SLURM_PROCID / the step's task count (slurm_tasks) / SLURM_LOCALID give the
    ranks, the first host of SLURM_JOB_NODELIST is the rendezvous address and the port is MASTER_PORT or
    20000 + job id mod 20000. A multi-task allocation entered without srun is a UserError (slurm_tasks).
    """
    if "RANK" in environ or "WORLD_SIZE" in environ:
        missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name not in environ]
        if missing:
            raise UserError(f"torchrun environment incomplete: {', '.join(missing)} not set")
        size = int(environ["WORLD_SIZE"])
        if size > 1 and ("MASTER_ADDR" not in environ or "MASTER_PORT" not in environ):
            raise UserError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun")
        return LaunchEnv(
            rank=int(environ["RANK"]),
            local_rank=int(environ["LOCAL_RANK"]),
            world_size=size,
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", "29500")),
            launcher="torchrun",
        )
    tasks = slurm_tasks(environ)
    if tasks > 1:
        job_id = int(environ.get("SLURM_JOB_ID", "0"))
        return LaunchEnv(
            rank=int(environ["SLURM_PROCID"]),
            local_rank=int(environ.get("SLURM_LOCALID", "0")),
            world_size=tasks,
            master_addr=environ.get("MASTER_ADDR") or first_slurm_host(environ.get("SLURM_JOB_NODELIST", "")),
            master_port=int(environ.get("MASTER_PORT", str(20000 + job_id % 20000))),
            launcher="slurm",
        )
    return LaunchEnv(
        rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=0, launcher="single"
    )


def resolve_device(device: str | None) -> str:
    """`--device`: None or "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" needs a visible GPU and
    "cuda:N" one of that index."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device must be auto, cuda, cuda:N or cpu, got {device!r}") from None
    if parsed.type not in ("cuda", "cpu") or (parsed.type == "cpu" and parsed.index):
        raise UserError(f"--device must be auto, cuda, cuda:N or cpu, got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible; pass --device cpu")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {device}: only {torch.cuda.device_count()} GPUs are visible (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    return device


def gpu_index(launch: LaunchEnv, requested: int | None, visible: int) -> int:
    """The GPU this process computes on: `--device cuda:N` for a single process; under a launcher, the GPU of
    the local rank, or GPU 0 of a SLURM task that sees exactly one (`--gpus-per-task 1`: SLURM gives each
    task its own). A GPU index with several processes, or too few GPUs for the local ranks, is a UserError."""
    if requested is not None:
        if launch.world_size > 1:
            raise UserError(
                f"--device cuda:{requested} names one GPU but {launch.world_size} processes each take the "
                "GPU of their local rank: pass --device cuda (restrict the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        return requested
    if launch.local_rank < visible:
        return launch.local_rank
    if launch.launcher == "slurm" and visible == 1:
        return 0
    raise UserError(
        f"local rank {launch.local_rank} but only {visible} GPUs visible on this node: "
        "launch one process per GPU"
    )


def init_distributed(device: str) -> DistEnv:
    """Join the process group the launcher describes (NCCL on cuda, gloo on cpu); one process needs none.

    `device` is "cuda", "cuda:N" (a single process only) or "cpu"; gpu_index picks the GPU. Calling it again
    in the same process returns the group already joined.
    """
    parsed = torch.device(device)
    if parsed.type not in ("cuda", "cpu"):
        raise UserError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is visible; pass --device cpu")
    launch = read_launch_env(os.environ)
    compute_device = "cpu"
    if parsed.type == "cuda":
        index = gpu_index(launch, parsed.index, torch.cuda.device_count())
        compute_device = f"cuda:{index}"
        torch.cuda.set_device(index)
    if launch.world_size == 1:
        return DistEnv(rank=0, local_rank=0, world_size=1, backend=None, device=compute_device)
    backend = "nccl" if parsed.type == "cuda" else "gloo"
    if not is_initialized():
        os.environ["MASTER_ADDR"] = launch.master_addr
        os.environ["MASTER_PORT"] = str(launch.master_port)
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world_size,
            device_id=torch.device(compute_device) if parsed.type == "cuda" else None,
        )
    return DistEnv(
        rank=dist.get_rank(),
        local_rank=launch.local_rank,
        world_size=dist.get_world_size(),
        backend=dist.get_backend(),
        device=compute_device,
    )


def compute_device(device: str | None) -> torch.device:
    """Join the torchrun / SLURM process group if any; this rank's device (gpu_index on GPUs)."""
    return torch.device(init_distributed(resolve_device(device)).device)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        local = local.contiguous()
        ctx.local_rows = local.shape[0]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        summed = grad.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_rows
        return summed[start : start + ctx.local_rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's `x` along dim 0 in rank order, with the gradient path the module describes.

    Every rank must pass the same shape (the pretraining engine requires a batch divisible by the world size
    and drops the last incomplete batch). Identity without a process group or with one process.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank the buffers (BatchNorm running statistics) of rank `src`, as DistributedDataParallel
    does before each forward: an evaluation between steps then sees the checkpoint's model on every rank."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def shard_range(num_items: int, shard_rank: int | None = None, num_shards: int | None = None) -> range:
    """This rank's contiguous block of `range(num_items)`; blocks, in rank order, differ in length by ≤ 1."""
    shard_rank = rank() if shard_rank is None else shard_rank
    num_shards = world_size() if num_shards is None else num_shards
    if not 0 <= shard_rank < num_shards:
        raise ValueError(f"rank {shard_rank} outside 0..{num_shards - 1}")
    return range(num_items * shard_rank // num_shards, num_items * (shard_rank + 1) // num_shards)
