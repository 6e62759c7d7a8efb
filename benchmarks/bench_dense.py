"""Dense retrieval on the demo's VOC layout (2,000 / 600 synthetic images of 48 px, `vicregl synth` as `make
demo` makes them) with the memory of 10⁴ patches at 96 px: wall and CPU seconds of `vicregl dense`'s compute
against the same retrieval on the plain backbone (BatchNorm not folded, NCHW), both in this process, and the
issue's budget (60 s on 2 cores). The two mIoUs must agree up to argmax ties.

    .venv/bin/python benchmarks/bench_dense.py                      # generates the layout into a temp folder
    .venv/bin/python benchmarks/bench_dense.py --data demo_out/synth/VOC2012 \
        --weights demo_out/pretrain/backbone.pth
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vicregl_cli.backbones import resolve_weights  # noqa: E402
from vicregl_cli.dense import DenseConfig, plan  # noqa: E402
from vicregl_cli.dense.features import dense_model, fuse_batchnorm  # noqa: E402
from vicregl_cli.dense.run import evaluate_retrieval  # noqa: E402

BUDGET_S = 60.0


def timed(task, model) -> tuple[float, float, float]:
    """(wall s, CPU s of this process and its finished data workers, mIoU) of one retrieval evaluation
    (memory + queries + metric)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    metrics, _ = evaluate_retrieval(task, model, torch.device("cpu"))
    return time.perf_counter() - wall, cpu_seconds() - cpu, float(metrics["mIoU"])


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children (the data workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="a VOC root (default: generate the demo layout)")
    parser.add_argument("--weights", default="random", help="weights file, or random (resnet10_small_w16)")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--memory-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes (the demo's setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            from vicregl_cli.data.synthetic import generate

            generate(Path(scratch), num_train=2000, num_val=600, image_size=48, seed=0, workers=args.threads)
            data = Path(scratch) / "VOC2012"
        weights = resolve_weights(args.weights, None if args.weights != "random" else "resnet10_small_w16")
        config = DenseConfig(dataset="voc", data_root=data, input_size=args.input_size, batch_size=100,
                             memory_sizes=(args.memory_size,), num_workers=args.workers, device="cpu",
                             recalibrate_bn=False)  # fmt: skip
        started = time.perf_counter()
        task = plan(config, weights)[0].task
        plan_s = time.perf_counter() - started
        plain = weights.build().eval().requires_grad_(False)
        fast = fuse_batchnorm(dense_model(weights, False, torch.device("cpu")))
        fast = fast.to(memory_format=torch.channels_last)
        base_wall, base_cpu, base_miou = timed(task, plain)
        wall, cpu, miou = timed(task, fast)
    print(f"demo VOC layout, {task.grid}x{task.grid} patches, memory {args.memory_size}, "
          f"{args.threads} threads, {args.workers} data workers")  # fmt: skip
    print(f"plan {plan_s:.1f} s")
    rows = (("plain backbone (NCHW, BatchNorm)", base_wall, base_cpu, base_miou),
            ("vicregl dense (folded, NHWC)", wall, cpu, miou))  # fmt: skip
    for name, seconds, cpu_seconds, value in rows:
        print(f"{name:34s} {seconds:6.1f} s wall  {cpu_seconds:6.1f} s CPU  mIoU {value:.2f}")
    print(f"ratio {wall / base_wall:.2f}x the plain backbone's wall time; "
          f"{wall / BUDGET_S:.2f}x the 60 s budget")  # fmt: skip


if __name__ == "__main__":
    main()
