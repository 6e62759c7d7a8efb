"""Memory and listing time of the pretraining file list: torchvision's ImageFolder list of (Path, label)
tuples (the old representation, `readers.ImageFolderDataset`) against the numpy arrays of
`data/file_list.py`, listed cold and loaded from the listing cache.

A synthetic ImageNet-shaped tree of empty files (default 200,000 files in 1,000 classes) is written under /tmp
and deleted afterwards. Each representation runs in a fresh Python process: it lists the root (timed), then a
DataLoader with N forked workers samples one epoch of indices in random order; the workers read the path and
label of each index, decode no image. Memory comes from /proc/<pid>/smaps_rollup: RSS, PSS (shared pages
divided among their sharers) and USS (pages private to the process: what copy-on-write has copied), for the
main process after listing and for each worker before and after the epoch. Per-image figures are divided by
the number of files and extrapolated to ImageNet-1k (1,281,167 images) and to an 8-GPU node at 10 workers per
process.

    python benchmarks/bench_file_list.py [--files 200000] [--classes 1000] [--workers 4]

The folders' times are set one hour into the past so that the listing is cached (a fresh tree is within
the cache's racy window: vicregl_cli/data/file_list_cache.py). The tree was just written, so the cold listing
reads folders from the OS's cache; a listing on a network file system after a reboot is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from vicregl_cli.data.file_list_cache import load_or_list
from vicregl_cli.data.readers import image_folder

IMAGENET_TRAIN = 1_281_167
NODE_WORKERS = 8 * 10  # 8 GPUs x 10 workers per process
REPRESENTATIONS = {
    "old": "list of (Path, label)",
    "cold": "arrays, listed",
    "cached": "arrays, from cache",
}


def memory() -> dict[str, int]:
    """This process's RSS, PSS and USS in bytes (smaps_rollup)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": private}


def write_tree(root: Path, files: int, classes: int) -> None:
    """`files` empty JPEG-named files in `classes` folders, named as ImageNet's; folders aged one hour."""
    for label in range(classes):
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True)
        for index in range(label, files, classes):
            os.close(os.open(folder / f"n{label:08d}_{index}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    past = time.time() - 3600
    for directory in [root, *root.iterdir()]:
        os.utime(directory, (past, past))


class PathReader(Dataset):
    """Item i = (path, label) of image i read from the representation under test; a negative index = a probe
    that returns the reading worker's pid and memory."""

    def __init__(self, read, count: int) -> None:
        self.read, self.count = read, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index < 0:
            return {"pid": os.getpid(), **memory()}
        path, label = self.read(index)
        return len(os.fspath(path)) + label


def first_item(batch: list):
    """Collate: a probe batch is its one dict; a batch of indices is its size (nothing large crosses back)."""
    return batch[0] if isinstance(batch[0], dict) else len(batch)


def probes(workers: int) -> list[list[int]]:
    return [[-1] for _ in range(workers)]  # batches go to the workers in turn: one probe each


def child(representation: str, root: Path, cache: Path, workers: int) -> dict:
    """List `root` in this process, sample one epoch with `workers` workers; the figures as a dict."""
    torch.set_num_threads(1)
    before = memory()
    start = time.perf_counter()
    if representation == "old":
        samples = image_folder(root).samples
        read, count = samples.__getitem__, len(samples)
    else:
        files, hit = load_or_list(root, cache)
        assert hit == (representation == "cached"), f"expected a cache {'hit' if not hit else 'miss'}"
        read, count = files.__getitem__, len(files)
    listing_s = time.perf_counter() - start
    listed = memory()
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0)).tolist()
    batches = probes(workers) + [order[i : i + 256] for i in range(0, count, 256)] + probes(workers)
    del order
    reader = PathReader(read, count)
    results = list(DataLoader(reader, batch_sampler=batches, num_workers=workers, collate_fn=first_item))
    start_probes, end_probes = results[:workers], results[-workers:]
    assert sum(results[workers:-workers]) == count
    assert len({probe["pid"] for probe in start_probes}) == workers == len({p["pid"] for p in end_probes})
    by_pid = {probe["pid"]: probe for probe in start_probes}
    return {
        "count": count,
        "listing_s": listing_s,
        "main_before": before,
        "main_listed": listed,
        "workers": [{"before": by_pid[probe["pid"]], "after": probe} for probe in end_probes],
    }


def run_child(representation: str, root: Path, cache: Path, workers: int) -> dict:
    command = [sys.executable, __file__, "--child", representation, "--root", str(root),
               "--cache", str(cache), "--workers", str(workers)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def rows(result: dict) -> dict[str, float]:
    """The table's figures of one representation (MB, bytes per image, s)."""
    count, workers = result["count"], result["workers"]
    mb = 1 / 2**20
    growth = [worker["after"]["uss"] - worker["before"]["uss"] for worker in workers]
    main_growth = result["main_listed"]["uss"] - result["main_before"]["uss"]
    return {
        "listing time (s)": result["listing_s"],
        "main USS growth by listing (MB)": main_growth * mb,
        "worker USS before epoch, mean (MB)": mean([w["before"]["uss"] for w in workers]) * mb,
        "worker USS after epoch, mean (MB)": mean([w["after"]["uss"] for w in workers]) * mb,
        "worker RSS after epoch, mean (MB)": mean([w["after"]["rss"] for w in workers]) * mb,
        "worker PSS after epoch, mean (MB)": mean([w["after"]["pss"] for w in workers]) * mb,
        "worker USS growth in epoch, max (MB)": max(growth) * mb,
        "main, bytes per image": main_growth / count,
        "worker copy, bytes per image": mean(growth) / count,
        "1.28M: main (GB)": main_growth / count * IMAGENET_TRAIN / 1e9,
        "1.28M: per worker (GB)": mean(growth) / count * IMAGENET_TRAIN / 1e9,
        "1.28M: 8-GPU node, 80 workers (GB)": mean(growth) / count * IMAGENET_TRAIN * NODE_WORKERS / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--child", choices=sorted(REPRESENTATIONS))
    parser.add_argument("--root", type=Path)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root, args.cache, args.workers)))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_file_list_", dir="/tmp"))
    try:
        start = time.perf_counter()
        write_tree(folder / "train", args.files, args.classes)
        elapsed = time.perf_counter() - start
        print(f"wrote {args.files} empty files in {args.classes} classes in {elapsed:.1f} s")
        root, cache = folder / "train", folder / "cache"
        results = {name: run_child(name, root, cache, args.workers) for name in REPRESENTATIONS}
    finally:
        shutil.rmtree(folder)
    table = {name: rows(result) for name, result in results.items()}
    print(f"{args.workers} workers, one epoch of {args.files} indices; MB = 2^20 bytes, GB = 10^9 bytes")
    print(f"{'':38s}" + "".join(f"{label:>24s}" for label in REPRESENTATIONS.values()))
    for key in table["old"]:
        print(f"{key:38s}" + "".join(f"{table[name][key]:24.3f}" for name in REPRESENTATIONS))
    old, new = table["old"], table["cached"]
    print(f"worker copy per image, old / new: {old['worker copy, bytes per image']:.1f} / "
          f"{new['worker copy, bytes per image']:.2f} bytes; listing old / cached: "
          f"{old['listing time (s)'] / new['listing time (s)']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
