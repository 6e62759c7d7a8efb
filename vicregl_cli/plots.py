"""PNG figures of `vicregl report --plots DIR`: pretraining curves from every stats.jsonl found (one panel per
logged term, the runs overlaid) and, per swept protocol, its metric against the learning rate. Matplotlib
figures drawn off-screen (Figure + Agg, no pyplot: no display and no global backend switch)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from vicregl_cli.errors import UserError
from vicregl_cli.report import best_record, by_protocol, weights_label
from vicregl_cli.training_stats import AXES, STATS_FILE, read_stats

CURVES_FILE = "training_curves.png"
LR_PARAMS = ("lr", "lr_backbone", "lr_head")  # the swept learning rates of the protocols' records
PANEL_COLUMNS = 4


def _grid(count: int) -> tuple[int, int]:
    columns = min(PANEL_COLUMNS, count)
    return math.ceil(count / columns), columns


def plot_training_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """One panel per logged term (first-seen order over the runs) against the step, every run overlaid."""
    terms: list[str] = []
    for lines in runs.values():
        for line in lines:
            terms.extend(key for key in line if key not in AXES and key not in terms)
    if not terms:
        raise UserError(f"the {STATS_FILE} files of {', '.join(runs)} hold no logged values yet")
    rows, columns = _grid(len(terms))
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, term in zip(axes, terms, strict=False):
        for label, lines in runs.items():
            points = [(line["step"], line[term]) for line in lines if term in line]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="." if len(points) < 30 else None, label=label)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(terms) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.savefig(path, dpi=100)
    return path


def _label(record: dict, keys: Sequence[str]) -> str:
    values = [f"{key}={record['params'][key]:g}" for key in keys if key in record["params"]]
    if "weights" in keys:  # the sha256 prefix tells apart files of one name (pretrained vs random init)
        values.insert(0, weights_label(record))
    return ", ".join(values) or record["protocol"]


Series = dict[str, list[tuple[float, float]]]  # line label -> (lr, metric) points


def metric_series(records: list[dict], metric: str) -> tuple[str, Series] | None:
    """(the swept lr, {line label: sorted (lr, metric) points}) of one protocol's records: one line per value
    of the other swept lr (semi's grid) and per weights file; None when no learning rate varies."""
    varying = [
        key for key in LR_PARAMS if len({json.dumps(record["params"].get(key)) for record in records}) > 1
    ]
    if not varying:
        return None
    x_key, series_keys = varying[0], varying[1:]
    if len({json.dumps(record["weights"]) for record in records}) > 1:
        series_keys.append("weights")
    series: Series = {}
    for record in records:
        if metric in record["metrics"] and x_key in record["params"]:
            point = (record["params"][x_key], record["metrics"][metric])
            series.setdefault(_label(record, series_keys), []).append(point)
    return x_key, {label: sorted(points) for label, points in series.items()}


def plot_metric_vs_lr(records: list[dict], metric: str, path: Path) -> Path | None:
    """`metric` against the swept learning rate of one protocol's records (log x), the lines of
    metric_series; None when no learning rate varies."""
    found = metric_series(records, metric)
    if found is None:
        return None
    x_key, series = found
    figure = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = figure.subplots()
    for label, points in series.items():
        lrs, values = zip(*points, strict=True)
        ax.plot(lrs, values, marker="o", label=label)
    best = best_record(records, metric)
    if best is not None and x_key in best["params"]:
        ax.plot([best["params"][x_key]], [best["metrics"][metric]], "*", markersize=14, color="gold",
                markeredgecolor="black", label=f"best: {best['run']}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{records[0]['protocol']}: {metric} against {x_key}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=100)
    return path


def write_plots(records: list[dict], stats: dict[str, Path], metric: str | None, out_dir: Path) -> list[Path]:
    """Every figure into `out_dir`: training_curves.png (if any stats.jsonl) and, per protocol whose records
    sweep a learning rate, <protocol>_<metric>_vs_lr.png (`metric` if that protocol has it, else its
    first). Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if stats:
        runs = {label: read_stats(file) for label, file in stats.items()}
        written.append(plot_training_curves(runs, out_dir / CURVES_FILE))
    for group, chosen in by_protocol(records, metric):
        if chosen is not None:
            figure = plot_metric_vs_lr(group, chosen, out_dir / f"{group[0]['protocol']}_{chosen}_vs_lr.png")
            written.extend([figure] if figure is not None else [])
    return written
