"""The demo's last step: OUT/summary.json and one table, pretrained vs random init for each protocol.

Usage: python scripts/demo_summary.py OUT SEED. Reads the result.json files the demo's evaluations wrote
(OUT/<protocol>/<pretrained|random>/...) and takes each side's best run by the protocol's metric.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vicregl_cli.files import write_json_atomic
from vicregl_cli.report import read_results

ROWS = (("knn", "top1@20"), ("linear", "top1"), ("segment", "mIoU"), ("dense-retrieval", "mIoU"),
        ("dense-kmeans", "mIoU"))


def best(folder: Path, metric: str) -> float:
    """The highest `metric` over the runs below `folder`."""
    return max(record["metrics"][metric] for record in read_results([folder]))


def main(out: Path, seed: int) -> None:
    rows = [
        {"protocol": protocol, "metric": metric, "random": best(out / protocol / "random", metric),
         "pretrained": best(out / protocol / "pretrained", metric)}
        for protocol, metric in ROWS
    ]  # fmt: skip
    write_json_atomic(out / "summary.json", {"seed": seed, "rows": rows})
    table = Table(title=f"demo (seed {seed}): VICRegL-pretrained vs random init (BatchNorm re-estimated)")
    for column in ("protocol", "metric", "random", "pretrained", "Δ"):
        table.add_column(column, justify="left" if column in ("protocol", "metric") else "right")
    for row in rows:
        delta = row["pretrained"] - row["random"]
        style = "green" if delta > 0 else "red"
        table.add_row(row["protocol"], row["metric"], f"{row['random']:.2f}", f"{row['pretrained']:.2f}",
                      f"[{style}]{delta:+.2f}[/{style}]")  # fmt: skip
    Console().print(table)
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
