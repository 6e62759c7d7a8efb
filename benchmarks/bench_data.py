"""Images/s on one CPU core of the multi-crop transform with positions, against the reference's PIL pipeline.

Both decode a 500 × 375 JPEG file per image (as a data loader does) and produce 2 × 224 + 6 × 96 views
with every colour augmentation and the positions of their grid cells. The baseline re-implements the
reference VICRegL transform with torchvision's v1 transforms on PIL images; ours is `MultiCropTransform` on
uint8 tensors. Rounds alternate between the pipelines so that a busy machine slows them alike; the best round
of each is reported, as images per wall-clock second and per second of the thread's CPU time, and the
median over rounds of the CPU-time ratio to the reference (steadier on a shared machine).

    python benchmarks/bench_data.py [--rounds 5] [--images 40]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torchvision.io import decode_jpeg, read_file

from vicregl_cli.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from vicregl_cli.data.multicrop import MULTICROP_PRESETS, MultiCropConfig, MultiCropTransform


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


class ReferencePipeline:
    """The reference VICRegL multi-crop transform with locations, in torchvision v1 transforms on PIL."""

    def __init__(self, config: MultiCropConfig) -> None:
        self.config = config
        self.jitter = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
        self.normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.groups = [(config.large_size, config.large_count, config.large_scale)]
        if config.small_count:
            self.groups.append((config.small_size, config.small_count, config.small_scale))

    def colour(self, crop: Image.Image, even: bool) -> torch.Tensor:
        if random.random() < 0.8:
            crop = self.jitter(crop)
        if random.random() < 0.2:
            crop = TF.to_grayscale(crop, num_output_channels=3)
        if random.random() < (1.0 if even else 0.1):
            crop = crop.filter(ImageFilter.GaussianBlur(random.uniform(0.1, 2.0)))
        if random.random() < (0.0 if even else 0.2):
            crop = ImageOps.solarize(crop)
        return self.normalize(TF.to_tensor(crop))

    @staticmethod
    def grid(top: int, left: int, height: int, width: int, cells: int, flipped: bool) -> torch.Tensor:
        positions = torch.zeros(cells, cells, 2)
        for row in range(cells):
            for column in range(cells):
                positions[row, column, 0] = top + (row + 0.5) * height / cells
                positions[row, column, 1] = left + (column + 0.5) * width / cells
        if flipped:
            positions = positions.flip(1)
        return positions.reshape(cells * cells, 2)

    def __call__(self, path: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with Image.open(path) as file:
            image = file.convert("RGB")
        views, positions = [], []
        for size, count, scale in self.groups:
            for index in range(count):
                top, left, height, width = T.RandomResizedCrop.get_params(image, scale, [3 / 4, 4 / 3])
                crop = TF.resized_crop(
                    image, top, left, height, width, [size, size], T.InterpolationMode.BICUBIC
                )
                flipped = random.random() < 0.5
                if flipped:
                    crop = TF.hflip(crop)
                views.append(self.colour(crop, even=index % 2 == 0))
                positions.append(self.grid(top, left, height, width, size // self.config.stride, flipped))
        return views, positions


def images_per_second(pipeline, path: Path, images: int) -> tuple[float, float]:
    """(images per wall-clock second, images per second of this thread's CPU time) over `images` calls."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(images):
        pipeline(path)
    return images / (time.perf_counter() - wall), images / (time.thread_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per pipeline")
    parser.add_argument("--images", type=int, default=40, help="images per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = MULTICROP_PRESETS["convnext"]
    reference = ReferencePipeline(config)
    transform = MultiCropTransform(config)

    def ours_from_file(path: Path):
        return transform(decode_jpeg(read_file(str(path))))

    def ours_from_pil(path: Path):
        with Image.open(path) as file:
            return transform(file.convert("RGB"))

    pipelines = {
        "reference (PIL)": reference,
        "ours (decode_jpeg)": ours_from_file,
        "ours (PIL decode)": ours_from_pil,
    }
    best_wall = dict.fromkeys(pipelines, 0.0)
    best_cpu = dict.fromkeys(pipelines, 0.0)
    round_cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    with tempfile.TemporaryDirectory() as folder:
        path = write_test_jpeg(Path(folder) / "image.jpg")
        for pipeline in pipelines.values():
            pipeline(path)
        for _ in range(args.rounds):
            for name, pipeline in pipelines.items():
                wall, cpu = images_per_second(pipeline, path, args.images)
                best_wall[name], best_cpu[name] = max(best_wall[name], wall), max(best_cpu[name], cpu)
                round_cpu[name].append(cpu)
    print(
        f"multi-crop {config.large_count} x {config.large_size} + "
        f"{config.small_count} x {config.small_size}, "
        f"500 x 375 JPEG, 1 thread, best of {args.rounds} rounds x {args.images} images"
    )
    print(f"  {'':<20} {'wall-clock':>12} {'CPU time':>12}  (images/s)")
    for name in pipelines:
        print(f"  {name:<20} {best_wall[name]:12.1f} {best_cpu[name]:12.1f}")
    reference_wall, reference_cpu = best_wall["reference (PIL)"], best_cpu["reference (PIL)"]
    for name in list(pipelines)[1:]:
        print(
            f"  speed-up of {name}: {best_wall[name] / reference_wall:.2f}x wall-clock, "
            f"{best_cpu[name] / reference_cpu:.2f}x CPU time"
        )
        # Rounds run back to back, so the ratio within a round sees the same machine load.
        reference_rounds = round_cpu["reference (PIL)"]
        ratios = [ours / base for ours, base in zip(round_cpu[name], reference_rounds, strict=True)]
        print(
            f"    CPU-time ratio per round: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
        )


if __name__ == "__main__":
    main()
