"""Loader-worker cost of the multi-crop pipeline: colour on the training device vs the full CPU pipeline.

Per recipe (ResNet: 2 × 224; ConvNeXt: 2 × 224 + 6 × 96), a DataLoader with one worker process reads a
folder of 500 × 375 JPEGs (seeded samples, batches of 16, as `vicregl pretrain` does) with each pipeline:

  CPU pipeline         the full CPU pipeline as main ran it before the GPU-fed split: PIL decode, crops,
                       colour and normalisation on the worker (float32 views), with today's crop and collate
                       code (faster than main's was: a conservative baseline);
  colour_on=workers    today's code with the colour kept on the worker (JPEGs decoded by simplejpeg);
  colour_on=device     the worker decodes, crops and draws the colour parameters; ships uint8 crops.

Measured: the worker's CPU seconds per sample (its process time — core-seconds, so a loaded machine's waiting
is not counted — stamped by the worker after each batch;
from the end of the first batch to the end of the last) — decode, augment, collate and the copy into
shared memory — as samples/s per core, and the bytes per sample of the batches that cross /dev/shm.
Rounds alternate between the pipelines so a busy machine slows them alike; the best round of each and the
median over rounds of the per-round ratio to the CPU pipeline are printed. Then one image's decode time with
each decoder at hand (same thread, best of rounds) and whether its pixels equal PIL's. The colour work itself
(colour_device.py) runs on the training device and is not counted here.

    python benchmarks/bench_data.py [--rounds 5] [--batches 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from vicregl_cli.data.decode import read_rgb_uint8
from vicregl_cli.data.file_list import FileListDataset, list_image_folder
from vicregl_cli.data.multicrop import MULTICROP_PRESETS, MultiCropConfig, MultiCropTransform, collate
from vicregl_cli.data.readers import load_rgb
from vicregl_cli.pretrain.plan import training_dataset
from vicregl_cli.pretrain.sampler import SeededSamples, sample_seed

BATCH = 16
IMAGES = 16
MAIN = "CPU pipeline"


def write_test_jpeg(path: Path, width: int = 500, height: int = 375, seed: int = 0) -> Path:
    """A photo-like JPEG: smooth colour gradients, a few discs, texture noise (so the codec has work)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs / width * 255, ys / height * 255, (xs + ys) / (width + height) * 255], axis=-1)
    for _ in range(12):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(15, 90)
        image[(ys - cy) ** 2 + (xs - cx) ** 2 < radius**2] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 12, size=image.shape)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def datasets(root: Path, config: MultiCropConfig) -> dict[str, SeededSamples]:
    """The three pipelines as the training loader sees them."""
    files = list_image_folder(root)
    return {
        MAIN: SeededSamples(FileListDataset(files, transform=MultiCropTransform(config))),
        "colour_on=workers": SeededSamples(training_dataset(files, config, "workers")),
        "colour_on=device": SeededSamples(training_dataset(files, config, "device")),
    }


def batch_bytes(batch) -> int:
    """Bytes of every tensor of a collated batch (what a worker puts in shared memory)."""
    if isinstance(batch, Tensor):
        return batch.nbytes
    return sum(batch_bytes(item) for item in batch)


def stamped_collate(batch: list) -> tuple[tuple, float]:
    """The training collate, plus the worker's CPU time when the batch is ready."""
    return collate(batch), time.process_time()


def worker_seconds_per_sample(dataset: SeededSamples, batches: int, epoch: int) -> float:
    """CPU seconds of one DataLoader worker per sample, batch 0 (the warm-up) left out; a batch's time
    includes putting the previous batch into shared memory."""
    order = [
        [(position % IMAGES, sample_seed(0, epoch, position)) for position in range(first, first + BATCH)]
        for first in range(0, batches * BATCH, BATCH)
    ]
    loader = DataLoader(dataset, batch_sampler=order, num_workers=1, collate_fn=stamped_collate)
    stamps = [stamp for _, stamp in loader]
    return (stamps[-1] - stamps[0]) / ((batches - 1) * BATCH)


def compare_pipelines(root: Path, name: str, rounds: int, batches: int) -> None:
    config = MULTICROP_PRESETS[name]
    pipelines = datasets(root, config)
    per_round: dict[str, list[float]] = {label: [] for label in pipelines}
    for epoch in range(rounds):
        for label, dataset in pipelines.items():
            per_round[label].append(worker_seconds_per_sample(dataset, batches, epoch))
    shm = {label: batch_bytes(collate([dataset[(0, 0)] for _ in range(BATCH)])) / BATCH
           for label, dataset in pipelines.items()}  # fmt: skip
    views = f"{config.large_count} x {config.large_size}" + (
        f" + {config.small_count} x {config.small_size}" if config.small_count else ""
    )
    print(f"\n{name} recipe ({views}), 1 worker, best of {rounds} rounds x {batches * BATCH} samples")
    print(f"  {'':<20} {'worker ms/sample':>16} {'samples/s/core':>15} {'shm bytes/sample':>17}")
    for label in pipelines:
        best = min(per_round[label])
        print(f"  {label:<20} {best * 1e3:16.2f} {1 / best:15.1f} {shm[label]:17,.0f}")
    for label in list(pipelines)[1:]:
        ratios = [base / ours for ours, base in zip(per_round[label], per_round[MAIN], strict=True)]
        print(
            f"  {label}: {min(per_round[MAIN]) / min(per_round[label]):.2f}x samples/s per core of the CPU "
            "pipeline "
            f"(per round: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
            f"max {max(ratios):.2f}x); shm bytes {shm[label] / shm[MAIN]:.4f} of its"
        )


def decoders(path: Path) -> dict[str, Callable[[], Tensor | np.ndarray]]:
    """Each decoder at hand, to a (3, H, W) or (H, W, 3) uint8 array of the file's pixels."""
    found: dict[str, Callable[[], Tensor | np.ndarray]] = {
        "PIL (load_rgb + array)": lambda: np.array(load_rgb(path)),
        "simplejpeg (data/decode.py)": lambda: read_rgb_uint8(path),
    }
    from torchvision.io import decode_jpeg, read_file

    found["torchvision decode_jpeg"] = lambda: decode_jpeg(read_file(str(path)))

    def pil_draft() -> np.ndarray:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 2, image.height // 2))
            return np.array(image.convert("RGB"))

    found["PIL draft 1/2 (DCT-scaled)"] = pil_draft
    return found


def compare_decoders(path: Path, rounds: int, calls: int = 50) -> None:
    reference = np.array(load_rgb(path))
    print(f"\ndecoding one 500 x 375 JPEG, 1 thread, best of {rounds} rounds x {calls} calls")
    for label, decode in decoders(path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image decoders
            pixels = decode()
            best = float("inf")
            for _ in range(rounds):
                start = time.thread_time()
                for _ in range(calls):
                    decode()
                best = min(best, (time.thread_time() - start) / calls)
        array = pixels.permute(1, 2, 0).numpy() if isinstance(pixels, Tensor) else pixels
        same = "n/a (smaller)" if array.shape != reference.shape else str(np.array_equal(array, reference))
        print(f"  {label:<30} {best * 1e3:7.3f} ms   pixels equal PIL's: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per pipeline")
    parser.add_argument("--batches", type=int, default=6, help=f"batches of {BATCH} per round (≥ 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "images"
        (root / "class").mkdir(parents=True)
        for seed in range(IMAGES):
            write_test_jpeg(root / "class" / f"{seed}.jpg", seed=seed)
        for name in ("resnet", "convnext"):
            compare_pipelines(root, name, args.rounds, args.batches)
        compare_decoders(root / "class" / "0.jpg", args.rounds)


if __name__ == "__main__":
    main()
