"""Pretraining throughput on one GPU: the ResNet-50 preset (2 x 224) and the ConvNeXt-S preset (2 x 224 +
6 x 96), bf16, channels_last, through the project's own plan, model, loader and training step.

For each preset, per GPU: (a) samples/s with one batch already on the device (through plan.to_device
once, so any device-side augmentation is done once), stepped again and again (the compute ceiling);
(b) samples/s with the real loader on a folder of JPEGs at ImageNet sizes (500 x 375) for each worker count;
the host syncs per step (torch.cuda.set_sync_debug_mode("warn"): one warning per synchronising call,
counted); peak memory (torch.cuda.max_memory_allocated); and VICRegL against VICReg (the same preset with
alpha = 1): step time and memory ratios (VICRegL paper, Table 11: 1.18x the time). Per-GPU batches are those
of the reference runs: 2048 / 32 GPUs = 64 for ResNet-50, 384 / 8 GPUs = 48 for ConvNeXt-S (--batch to
change). Prints one table and writes a JSON.

    python benchmarks/gpu_pretrain.py --out gpu_pretrain.json                        # a GPU node
    python benchmarks/gpu_pretrain.py --device cpu --tiny --out /tmp/gpu_tiny.json  # seconds, in the suite

--tiny: a narrow ResNet-10 (resnet10_small_w16), 32 / 16 px crops, 64 x 48 JPEGs, a few steps: it checks
that every path of the benchmark runs (tests/test_gpu_bench.py); its figures say nothing about a GPU. On a CPU
the syncs are not counted (null) and the peak memory is the process's maximum RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from bench_data import write_test_jpeg

from vicregl_cli.interrupts import StopRequest
from vicregl_cli.pretrain.config import load_config
from vicregl_cli.pretrain.kernels import tune_cuda_kernels
from vicregl_cli.pretrain.loop import _step
from vicregl_cli.pretrain.optim import build_optimizer
from vicregl_cli.pretrain.plan import Plan, build_model, make_loader, plan_run, to_device
from vicregl_cli.pretrain.sampler import EpochBatchSampler

PRESETS = {"resnet50": ("resnet50_alpha0.75", 64), "convnext_small": ("convnext_small_alpha0.75", 48)}
TINY = {  # per preset: the same crop layout, scaled down to seconds on a CPU
    "resnet50": dict(crop_sizes=[32], crop_counts=[2]),
    "convnext_small": dict(crop_sizes=[32, 16], crop_counts=[2, 2]),
}
TINY_MODEL = dict(backbone="resnet10_small_w16", mlp="32-32", maps_mlp="16-16", num_matches=[4, 2])
UNIQUE_JPEGS = 64  # the folder holds hard links to these (decoding cost is the same as distinct files)


def write_folder(root: Path, count: int, size: tuple[int, int]) -> None:
    """`count` JPEGs in 4 class folders: UNIQUE_JPEGS photo-like files written once, the rest hard links."""
    originals = []
    for index in range(count):
        path = root / f"c{index % 4}" / f"{index:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if index < UNIQUE_JPEGS:
            originals.append(write_test_jpeg(path, *size, seed=index))
        else:
            os.link(originals[index % UNIQUE_JPEGS], path)


def peak_memory(device: str) -> int:
    """Bytes: the device's peak allocation since the last reset, or on a CPU the process's maximum RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(plan: Plan, batches, warmup: int, steps: int) -> dict:
    """Run warmup + steps training steps on `batches` (an iterator of device batches); time, syncs and peak
    memory of the last `steps`."""
    device = plan.env.device
    gc.collect()  # the previous measurement's model and loader workers go before this one's peak is read
    model = build_model(plan)
    optimizer = build_optimizer(model, plan.config.optimizer, plan.config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=plan.precision == "fp16")
    stop, checkpoint = StopRequest(), Path(os.devnull)
    model.train()
    for _ in range(warmup):
        _step(plan, model, optimizer, scaler, stop, "warm-up", checkpoint, next(batches))
    synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_sync_debug_mode("warn")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            _step(plan, model, optimizer, scaler, stop, "benchmark", checkpoint, next(batches))
        if device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    elapsed = time.perf_counter() - start
    syncs = sum("synchronizing" in str(warning.message) for warning in caught)
    per_step = elapsed / steps
    return {
        "samples_per_s": plan.config.batch_size / per_step,
        "step_ms": per_step * 1e3,
        "syncs_per_step": syncs / steps if device.startswith("cuda") else None,
        "peak_memory_gb": peak_memory(device) / 1e9,
    }


def on_device(plan: Plan, warmup: int, steps: int) -> dict:
    """(a) The compute ceiling: the first loader batch moved to the device once, stepped on repeatedly."""
    sampler = EpochBatchSampler(len(plan.dataset), plan.config.batch_size, seed=plan.config.seed)
    single = dataclasses.replace(plan, config=dataclasses.replace(plan.config, num_workers=0))
    batch = to_device(plan, *next(iter(make_loader(single, sampler))))
    return timed_steps(plan, iter(lambda: batch, None), warmup, steps)


def with_loader(plan: Plan, workers: int, warmup: int, steps: int) -> dict:
    """(b) The real loader with `workers` processes; the warm-up covers their start and first prefetch."""
    plan = dataclasses.replace(plan, config=dataclasses.replace(plan.config, num_workers=workers))
    sampler = EpochBatchSampler(len(plan.dataset), plan.config.batch_size, seed=plan.config.seed)
    batches = (to_device(plan, *batch) for batch in make_loader(plan, sampler))
    return {"workers": workers, **timed_steps(plan, batches, warmup, steps)}


def bench_preset(name: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    preset, batch = PRESETS[name]
    overrides = dict(data=str(data), out=str(out / name), batch_size=args.batch or batch, probe=True,
                     colour_on=args.colour_on)  # fmt: skip
    if args.tiny:
        overrides.update(TINY_MODEL, **TINY[name])
    config = load_config(preset, overrides)
    plan = plan_run(config, args.device, write_cache=False)
    tune_cuda_kernels(plan.env.device)  # as the training loop: cuDNN autotuning, TF32 convolutions
    vicreg = plan_run(dataclasses.replace(config, alpha=1.0), args.device, write_cache=False)
    warmup = args.warmup
    result = {
        "preset": preset,
        "batch_per_gpu": config.batch_size,
        "colour_on": config.colour_on,
        "crops": [f"{n} x {size}" for n, size in zip(config.crop_counts, config.crop_sizes, strict=True)],
        "on_device": on_device(plan, warmup, args.steps),
        "loader": [with_loader(plan, workers, warmup + 2 * workers, args.steps) for workers in args.workers],
        "vicreg_on_device": on_device(vicreg, warmup, args.steps),
    }
    vicregl, vicreg = result["on_device"], result["vicreg_on_device"]
    result["vicregl_over_vicreg_time"] = vicregl["step_ms"] / vicreg["step_ms"]
    result["vicregl_over_vicreg_memory"] = vicregl["peak_memory_gb"] / vicreg["peak_memory_gb"]
    return result


def print_table(report: dict) -> None:
    print(f"device: {report['device_name']}  torch {report['torch']}  precision {report['precision']}"
          f"{'  (--tiny: not GPU figures)' if report['tiny'] else ''}")  # fmt: skip
    print(f"{'preset':16s}{'feeding':24s}{'samples/s/GPU':>14s}{'step ms':>10s}{'syncs/step':>11s}"
          f"{'peak GB':>9s}")  # fmt: skip
    for name, result in report["presets"].items():
        rows = [("on device (ceiling)", result["on_device"])]
        rows += [(f"loader, {row['workers']} workers", row) for row in result["loader"]]
        rows.append(("VICReg a=1, on device", result["vicreg_on_device"]))
        for label, row in rows:
            syncs = "-" if row["syncs_per_step"] is None else f"{row['syncs_per_step']:.1f}"
            print(f"{name:16s}{label:24s}{row['samples_per_s']:14.1f}{row['step_ms']:10.1f}{syncs:>11s}"
                  f"{row['peak_memory_gb']:9.2f}")  # fmt: skip
        print(f"{name:16s}colour on {result['colour_on']}; VICRegL / VICReg: time "
              f"{result['vicregl_over_vicreg_time']:.2f}x (paper 1.18x), "
              f"memory {result['vicregl_over_vicreg_memory']:.2f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (one GPU) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny backbone, crops, images: seconds on a CPU")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated: " + ", ".join(PRESETS))
    parser.add_argument("--workers", default=None, help="loader worker counts (default 4,8,12; --tiny: 1)")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: the reference's)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --tiny: 1)")
    parser.add_argument("--colour-on", choices=("device", "workers"), default=None,
                        help="where the colour augmentation runs (default: the config's, device)")
    parser.add_argument("--out", type=Path, default=Path("gpu_pretrain.json"), help="the JSON written")
    args = parser.parse_args(argv)
    args.workers = [int(count) for count in (args.workers or ("1" if args.tiny else "4,8,12")).split(",")]
    args.steps = args.steps or (2 if args.tiny else 30)
    args.warmup = args.warmup or (1 if args.tiny else 5)
    args.batch = args.batch or (4 if args.tiny else None)
    if args.tiny:
        torch.set_num_threads(1)  # a shared CPU runs the tiny steps fastest on one thread
    names = args.presets.split(",")
    most_steps = args.warmup + 2 * max(args.workers) + args.steps
    with tempfile.TemporaryDirectory(prefix="gpu_pretrain_") as folder:
        data = Path(folder) / "jpegs"
        write_folder(data, most_steps * (args.batch or max(batch for _, batch in PRESETS.values())),
                     (64, 48) if args.tiny else (500, 375))  # fmt: skip
        presets = {name: bench_preset(name, args, data, Path(folder)) for name in names}
    report = {
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "precision": "bf16" if args.device.startswith("cuda") else "fp32",
        "tiny": args.tiny,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "presets": presets,
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
