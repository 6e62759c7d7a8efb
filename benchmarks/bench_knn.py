"""k-NN speed and peak memory: the chunked `knn_evaluate` against a one-matrix reference that holds every
query × train similarity at once. Prints wall time, peak memory and the accuracies (which must agree).

    .venv/bin/python benchmarks/bench_knn.py              # 100k x 2048 train, 10k queries, 1000 classes, CPU
    .venv/bin/python benchmarks/bench_knn.py --device cuda

Each method runs in its own subprocess so that its peak memory is its own (CPU: the peak resident set after
the features exist, via /proc clear_refs + VmHWM; CUDA: torch.cuda.max_memory_allocated)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vicregl_cli.evaluate.knn import class_scores, hits_at, knn_evaluate  # noqa: E402


def make_features(args: argparse.Namespace, device: torch.device):
    """Clustered random features: class centres + noise, so the accuracies are neither 0 nor 100."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(args.classes, args.dim, generator=generator)
    train_labels = torch.randint(0, args.classes, (args.num_train,), generator=generator)
    query_labels = torch.randint(0, args.classes, (args.num_queries,), generator=generator)
    train = centres[train_labels].add_(
        torch.randn(args.num_train, args.dim, generator=generator), alpha=args.noise
    )
    queries = centres[query_labels].add_(
        torch.randn(args.num_queries, args.dim, generator=generator), alpha=args.noise
    )
    return train.to(device), train_labels.to(device), queries.to(device), query_labels.to(device)


def one_matrix_reference(train, train_labels, queries, query_labels, ks, temperature, num_classes):
    """All similarities at once (num_queries × num_train), one top-k, the same votes and hit rule."""
    train = torch.nn.functional.normalize(train, dim=1)
    queries = torch.nn.functional.normalize(queries, dim=1)
    similarities = queries @ train.T
    values, indices = similarities.topk(max(ks), dim=1)
    del similarities
    neighbour_labels = train_labels[indices]
    metrics = {}
    for k in ks:
        scores = class_scores(values[:, :k], neighbour_labels[:, :k], num_classes, temperature)
        hits = hits_at(scores, query_labels, (1, 5))
        metrics[f"top1@{k}"] = 100.0 * int(hits[1].sum()) / len(query_labels)
        metrics[f"top5@{k}"] = 100.0 * int(hits[5].sum()) / len(query_labels)
    return metrics


def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kib("VmRSS") * 1024


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _proc_status_kib("VmHWM") * 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    train, train_labels, queries, query_labels = make_features(args, device)
    baseline = _reset_peak(device)
    started = time.perf_counter()
    if args.method == "chunked":
        metrics = knn_evaluate(
            train, train_labels, queries, query_labels, args.k, temperature=args.temperature,
            num_classes=args.classes, chunk_size=args.chunk_size,
            train_chunk_size=args.train_chunk_size or None,
            show_progress=False,
        )  # fmt: skip
    else:
        metrics = one_matrix_reference(
            train, train_labels, queries, query_labels, args.k, args.temperature, args.classes
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    return {
        "method": args.method,
        "wall_s": wall,
        "peak_bytes_above_features": _peak(device) - baseline,
        "metrics": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-train", type=int, default=100_000)
    parser.add_argument("--num-queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--noise", type=float, default=6.0, help="noise std around the class centres")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--train-chunk-size", type=int, default=131072, help="0: whole train set per tile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", choices=["chunked", "reference", "both"], default="both")
    args = parser.parse_args()
    if args.method != "both":
        print(json.dumps(run_one(args)))
        return
    results = []
    for method in ("chunked", "reference"):
        command = [sys.executable, __file__, *sys.argv[1:], "--method", method]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    chunked, reference = results
    tile = f"{args.chunk_size} x {args.train_chunk_size or args.num_train}"
    print(
        f"{args.num_train} train x {args.dim}, {args.num_queries} queries, {args.classes} classes, "
        f"k={args.k}, device {args.device}, chunked tile {tile}"
    )
    for result in results:
        metrics = "  ".join(f"{name} {value:.2f}" for name, value in result["metrics"].items())
        peak_mib = result["peak_bytes_above_features"] / 2**20
        print(
            f"  {result['method']:>9}: {result['wall_s']:7.2f} s   peak {peak_mib:9.1f} MiB above the"
            f" features   {metrics}"
        )
    memory_ratio = chunked["peak_bytes_above_features"] / max(reference["peak_bytes_above_features"], 1)
    print(
        f"  chunked / reference: time {chunked['wall_s'] / reference['wall_s']:.2f}x,"
        f" peak memory {memory_ratio:.3f}x;"
        f" metrics equal: {chunked['metrics'] == reference['metrics']}"
    )


if __name__ == "__main__":
    main()
