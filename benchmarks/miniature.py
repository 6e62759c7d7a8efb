"""The miniature reproduction (DESIGN §7, docs/miniature.md): random init vs VICReg (alpha 1) vs VICRegL
(alpha 0.9 and 0.75) pretrained on the synthetic data with the demo's budget, the same data and seeds, then
k-NN, linear probe, frozen linear segmentation and the dense protocols (in-context retrieval, k-means) with
the demo's settings. Evidence, not pass/fail: it prints the table and writes it between the markers of
docs/miniature.md.

    .venv/bin/python benchmarks/miniature.py --out /tmp/miniature --seeds 0 1     # ~40 min on 2 cores

A rerun on the same --out reuses each method's backbone and the figures in its metrics.json: only what is
missing runs (a new measure, a seed that did not finish).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from functools import partial
from pathlib import Path

import yaml

from vicregl_cli.backbones import WeightsRef, resolve_weights, save_backbone
from vicregl_cli.data.readers import image_folder
from vicregl_cli.data.synthetic import generate
from vicregl_cli.dense import protocol as dense
from vicregl_cli.dense.config import DenseConfig
from vicregl_cli.evaluate import knn, linear
from vicregl_cli.evaluate.features import eval_transform, recalibrate_batchnorm
from vicregl_cli.pretrain.config import load_config
from vicregl_cli.pretrain.loop import train
from vicregl_cli.sweep import run_protocol
from vicregl_cli.transfer import segment
from vicregl_cli.transfer.segment_plan import SegmentSettings

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "vicregl_cli" / "configs" / "pretrain" / "demo.yaml"
DOC = ROOT / "docs" / "miniature.md"
BEGIN, END = "<!-- miniature:begin -->", "<!-- miniature:end -->"
METHODS = {
    "random init": None, "VICReg (alpha 1)": 1.0, "VICRegL (alpha 0.9)": 0.9, "VICRegL (alpha 0.75)": 0.75
}  # fmt: skip
IMAGE_SIZE = 48


def baseline(folder: Path, seed: int, train_images: Path) -> None:
    """The random-init backbone of the preset, BatchNorm re-estimated on the training images."""
    backbone = yaml.safe_load(PRESET.read_text())["backbone"]
    model = resolve_weights("random", backbone, seed).build()
    recalibrate_batchnorm(model, image_folder(train_images, eval_transform(IMAGE_SIZE, IMAGE_SIZE)),
                          num_batches=100, batch_size=200, seed=seed)  # fmt: skip
    save_backbone(folder / "backbone.pth", backbone, model.state_dict())


FEATURES = dict(image_size=IMAGE_SIZE, resize=IMAGE_SIZE, batch_size=200, num_workers=0, device="cpu")


def knn_top1(weights: WeightsRef, data: Path, out: Path, seed: int) -> float:
    """The demo's k-NN: top-1 at k = 20 on the classification layout."""
    config = knn.KnnConfig(data=data / "classification", ks=(20,), **FEATURES)
    return run_protocol(knn, config, weights, out / "knn")[0]["metrics"]["top1@20"]


def linear_top1(weights: WeightsRef, data: Path, out: Path, seed: int) -> float:
    """The demo's cached linear probe: the best top-1 over its three learning rates."""
    config = linear.LinearConfig(data=data / "classification", lrs=(1.0, 0.3, 0.1), epochs=30, cached=True,
                                 seed=seed, **FEATURES)  # fmt: skip
    return max(record["metrics"]["top1"] for record in run_protocol(linear, config, weights, out / "linear"))


def segment_miou(weights: WeightsRef, data: Path, out: Path, seed: int) -> float:
    """The demo's frozen linear segmentation on the VOC layout: mIoU."""
    settings = SegmentSettings(
        dataset="voc", data_root=data / "VOC2012", lrs=(0.1,), iters=1000, batch_size=16, crop_size=48,
        workers=0, seed=seed, device="cpu",
    )  # fmt: skip
    records = run_protocol(segment, settings, weights, out / "segment")
    return max(record["metrics"]["mIoU"] for record in records)


def dense_miou(protocol: str, weights: WeightsRef, data: Path, out: Path, seed: int) -> float:
    """The demo's `vicregl dense` (96 px input, deterministic memory of 10^4 patches, k-means at K = the class
    count) on the VOC layout: mIoU, Hungarian-matched."""
    config = DenseConfig(
        dataset="voc", data_root=data / "VOC2012", protocol=protocol, memory_sizes=(10_000,), augment=False,
        input_size=96, clusters=(), batch_size=100, num_workers=0, seed=seed, device="cpu",
    )  # fmt: skip
    return run_protocol(dense, config, weights, out / f"dense-{protocol}")[0]["metrics"]["mIoU"]


MEASURES = {
    "knn top1@20": knn_top1, "linear top1": linear_top1, "segment mIoU": segment_miou,
    "dense-retrieval mIoU": partial(dense_miou, "retrieval"),
    "dense-kmeans mIoU": partial(dense_miou, "kmeans"),
}  # fmt: skip


def evaluate(
    weights_file: Path, data: Path, folder: Path, seed: int, measures: list[str]
) -> dict[str, float]:
    """The `measures` (names of MEASURES) of one backbone file; each figure is kept in FOLDER/metrics.json as
    soon as it is measured, and a rerun measures only what that file lacks."""
    saved = folder / "metrics.json"
    metrics = json.loads(saved.read_text()) if saved.is_file() else {}
    weights = resolve_weights(weights_file)
    for name in measures:
        if name not in metrics:
            with contextlib.redirect_stdout(io.StringIO()):
                metrics[name] = MEASURES[name](weights, data, folder / "eval", seed)
            saved.write_text(json.dumps(metrics, indent=2))
    return {name: metrics[name] for name in measures}


def run_seed(out: Path, seed: int, measures: list[str]) -> dict[str, dict[str, float]]:
    """Every method on the data of one seed (the data, the pretraining and the random init share it)."""
    data = out / f"seed{seed}" / "synth"
    if not (data / "classification").is_dir():
        generate(data, num_train=2000, num_val=600, image_size=IMAGE_SIZE, seed=seed, workers=2)
    results = {}
    for method, alpha in METHODS.items():
        folder = out / f"seed{seed}" / method.split(" (")[0].replace(" ", "_") / str(alpha)
        started = time.perf_counter()
        weights_file = folder / ("backbone.pth" if alpha is None else "pretrain/backbone.pth")
        if alpha is None and not weights_file.is_file():
            baseline(folder, seed, data / "classification" / "train")
        elif not weights_file.is_file():  # an earlier run's backbone.pth is reused
            overrides = dict(data=str(data / "classification" / "train"), out=str(folder / "pretrain"),
                             alpha=alpha, seed=seed)  # fmt: skip
            train(load_config(PRESET, overrides), device="cpu", command_line=["benchmarks/miniature.py"])
        results[method] = evaluate(weights_file, data, folder, seed, measures)
        minutes = round((time.perf_counter() - started) / 60, 1)
        print(json.dumps({"seed": seed, "method": method, **results[method], "minutes": minutes}), flush=True)
    return results


def table(per_seed: dict[int, dict[str, dict[str, float]]]) -> str:
    """Markdown: mean ± half-range over the seeds, per method and metric; then each seed's figures."""
    metrics = list(next(iter(next(iter(per_seed.values())).values())))
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for method in METHODS:
        cells = []
        for metric in metrics:
            values = [per_seed[seed][method][metric] for seed in per_seed]
            spread = (max(values) - min(values)) / 2
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = ", ".join(str(seed) for seed in per_seed)
    note = f"Seeds {seeds} (mean ± half the range); chance: 8.3 % top-1 (12 classes)."
    each = ["| method | seed | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method in METHODS:
        for seed, results in per_seed.items():
            figures = " | ".join(f"{results[method][metric]:.2f}" for metric in metrics)
            each.append(f"| {method} | {seed} | {figures} |")
    return "\n".join(lines) + f"\n\n{note}\n\n" + "\n".join(each) + "\n"


def write_doc(markdown: str) -> None:
    """Replace the text between the markers of docs/miniature.md with the new table."""
    text = DOC.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + markdown + text[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("miniature_out"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--measures", nargs="+", choices=list(MEASURES), default=list(MEASURES),
        help="what to measure (default: all; docs/miniature.md is written only then)",
    )  # fmt: skip
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args()
    per_seed = {seed: run_seed(args.out, seed, args.measures) for seed in args.seeds}
    markdown = table(per_seed)
    print(markdown)
    (args.out / "miniature.json").write_text(json.dumps(per_seed, indent=2))
    if not args.no_doc and args.measures == list(MEASURES):
        write_doc(markdown)


if __name__ == "__main__":
    main()
