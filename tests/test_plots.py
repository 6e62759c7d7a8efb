"""`vicregl report --plots DIR` on a miniature demo output (a 2-epoch pretraining with its k-NN monitor and a
linear --cached lr sweep): training curves and metric-against-lr PNGs, their panels and series checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vicregl_cli.backbones import resolve_weights
from vicregl_cli.errors import UserError
from vicregl_cli.evaluate import linear
from vicregl_cli.plots import metric_series, plot_metric_vs_lr, plot_training_curves
from vicregl_cli.pretrain.config import load_config
from vicregl_cli.pretrain.loop import train
from vicregl_cli.pretrain_hooks import monitor_hooks
from vicregl_cli.sweep import run_protocol
from vicregl_cli.training_stats import read_stats, split_inputs

torch.set_num_threads(1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, synthetic) -> Path:
    """demo_out/ in miniature: pretrain/ (stats.jsonl with monitor lines) and linear/ (a 3-lr sweep)."""
    out, data = tmp_path_factory.mktemp("demo_out"), synthetic
    config = load_config("demo", dict(data=str(data / "train"), out=str(out / "pretrain"), epochs=2,
                                      warmup_epochs=1, batch_size=16, log_every=1, num_workers=0,
                                      monitor_data=str(data)))  # fmt: skip
    train(config, device="cpu", hooks=monitor_hooks(config))
    weights = resolve_weights(str(out / "pretrain" / "backbone.pth"))
    sweep = linear.LinearConfig(data=data, lrs=(1.0, 0.3, 0.1), epochs=2, batch_size=16, image_size=32,
                                resize=36, num_workers=0, cached=True)  # fmt: skip
    run_protocol(linear, sweep, weights, out / "linear")
    return out


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_report_plots_writes_curves_and_lr_figures(demo_out, tmp_path):
    from vicregl_cli.cli import app

    figures = tmp_path / "figures"
    result = CliRunner().invoke(app, ["report", str(demo_out), "--plots", str(figures)])
    assert result.exit_code == 0, result.output
    written = sorted(path.name for path in figures.iterdir())
    assert written == ["linear-cached_top1_vs_lr.png", "training_curves.png"]
    width, height = _png_size(figures / "training_curves.png")
    lines = read_stats(demo_out / "pretrain" / "stats.jsonl")
    terms = {key for line in lines for key in line} - {"epoch", "step"}
    assert "knn_top1@20" in terms and "local_inv" in terms
    rows = -(-len(terms) // 4)
    assert (width, height) == (4 * 420, rows * 300)  # 4 panels a row, one panel per logged term
    assert _png_size(figures / "linear-cached_top1_vs_lr.png") == (550, 400)
    assert "top1" in result.output  # the table is still printed


def test_curves_overlay_runs_and_lr_plot_draws_every_point(demo_out, tmp_path):
    lines = read_stats(demo_out / "pretrain" / "stats.jsonl")
    shifted = [{**line, "loss": line["loss"] + 1.0} for line in lines if "loss" in line]
    runs = {"a": lines, "b": shifted}
    path = plot_training_curves(runs, tmp_path / "curves.png")
    assert path.stat().st_size > 0

    records = [json.loads(path.read_text()) for path in sorted((demo_out / "linear").rglob("result.json"))]
    assert plot_metric_vs_lr(records[:1], "top1", tmp_path / "one.png") is None  # a single lr: no curve
    assert plot_metric_vs_lr(records, "top1", tmp_path / "lr.png") == tmp_path / "lr.png"


def test_inputs_split_into_records_and_stats(demo_out, tmp_path):
    results, stats = split_inputs([demo_out])
    assert results == [demo_out] and stats == {"pretrain": demo_out / "pretrain" / "stats.jsonl"}
    results, stats = split_inputs([demo_out / "pretrain" / "stats.jsonl"])
    assert results == [] and list(stats) == ["pretrain"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no result.json, summary.json or stats.jsonl"):
        split_inputs([tmp_path / "empty"])


def test_sweeps_of_two_weights_files_with_one_name_are_two_lines_sorted_by_lr():
    def record(sha: str, lr: float, top1: float) -> dict:
        weights = {"path": f"/runs/{sha}/backbone.pth", "sha256": sha * 8, "seed": None}
        return {"run": f"cached_lr={lr:g}", "protocol": "linear-cached", "weights": weights,
                "params": {"lr": lr}, "metrics": {"top1": top1}}  # fmt: skip

    records = [record("aa", 1.0, 30.0), record("aa", 0.1, 26.0),
               record("bb", 0.1, 14.0), record("bb", 1.0, 14.5)]  # fmt: skip
    x_key, series = metric_series(records, "top1")
    assert x_key == "lr" and series == {
        "backbone.pth (aaaaaaaa)": [(0.1, 26.0), (1.0, 30.0)],
        "backbone.pth (bbbbbbbb)": [(0.1, 14.0), (1.0, 14.5)],
    }
    assert metric_series(records[:1], "top1") is None  # nothing swept: no figure
