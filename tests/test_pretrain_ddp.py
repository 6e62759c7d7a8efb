"""Two gloo processes with n samples each give the loss and parameter gradients of one process with the 2n
samples.

The model is a ConvNeXt (LayerNorm everywhere, projectors included): per-rank BatchNorm statistics would
legitimately differ on CPU, where SyncBatchNorm is unavailable.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from vicregl_cli.backbones import build_backbone
from vicregl_cli.pretrain.model import LossWeights, VICRegL

BATCH = 8  # 2 processes x 4 samples
SIZES = (64, 64, 32, 32)  # two large views (2 x 2 grid), two small views (1 x 1)
LOGGED_TERMS = ("loss", "global_inv", "global_var", "global_cov", "local_inv", "local_var", "local_cov",
                "probe_loss", "probe_top1")


def make_model() -> VICRegL:
    torch.manual_seed(0)
    backbone = build_backbone("convnext_tiny", drop_path_rate=0.0)
    model = VICRegL(backbone, [64, 32], [32, 16], LossWeights(alpha=0.75, num_matches=(2, 1)), num_classes=4)
    assert model.backbone.spec.norm == "layer" and isinstance(model.expander[1], torch.nn.LayerNorm)
    return model


def make_inputs():
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(BATCH, 3, size, size, generator=generator) for size in SIZES]
    positions = [torch.rand(BATCH, (size // 32) ** 2, 2, generator=generator) * 64 for size in SIZES]
    labels = torch.randint(0, 4, (BATCH,), generator=generator)
    return views, positions, labels


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vicregl_cli.distributed import init_distributed
    from vicregl_cli.errors import UserError
    from vicregl_cli.pretrain.config import PretrainConfig
    from vicregl_cli.pretrain.logs import log_record
    from vicregl_cli.pretrain.loop import wrap_ddp
    from vicregl_cli.pretrain.plan import plan_run

    env = init_distributed("cpu")
    batch_error = ""
    try:
        plan_run(PretrainConfig(batch_size=3, data=""), "cpu")
    except UserError as error:
        batch_error = str(error)
    model = make_model()
    wrapped = wrap_ddp(model, env)
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in wrapped.modules())  # CPU: no SyncBatchNorm
    views, positions, labels = make_inputs()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    outputs = wrapped([v[part] for v in views], [p[part] for p in positions], labels[part])
    outputs["loss"].backward()
    record = log_record(outputs, 0, 1, 0.1, BATCH, (0.0, 0), env)  # every rank joins its all_reduce
    loss = outputs["loss"].detach().clone()
    dist.all_reduce(loss)
    if rank == 0:
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        local = {key: float(outputs[key].detach()) for key in LOGGED_TERMS}
        torch.save(
            dict(loss=loss / world, grads=grads, batch_error=batch_error, record=record, local=local), out
        )
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_equal_one_process_with_the_whole_batch(tmp_path: Path):
    out = tmp_path / "ddp.pt"
    # fork: the children inherit the imported modules (spawn would re-import torch twice on a loaded machine)
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="fork")
    distributed = torch.load(out, weights_only=True)
    assert "not divisible by the 2 processes" in distributed["batch_error"]

    torch.set_num_threads(1)
    model = make_model()
    outputs = model(*make_inputs())
    outputs["loss"].backward()
    torch.testing.assert_close(distributed["loss"], outputs["loss"].detach(), rtol=1e-5, atol=1e-5)
    # stats.jsonl shows the one-process values: the loss terms are averaged over the ranks for logging
    # (rank 0's own invariance terms, computed on its half of the batch, differ from them)
    one_process = {key: float(outputs[key].detach()) for key in LOGGED_TERMS}
    for key in LOGGED_TERMS:
        assert abs(distributed["record"][key] - one_process[key]) < 1e-5, key
    rank0_terms = distributed["local"]
    assert any(abs(rank0_terms[key] - one_process[key]) > 1e-3 for key in ("global_inv", "local_inv"))
    compared = 0
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(distributed["grads"][name], parameter.grad, rtol=1e-5, atol=1e-5, msg=name)
        compared += parameter.grad.abs().sum() > 0
    assert compared > 100  # backbone, expander, maps projector and probe all received gradients
