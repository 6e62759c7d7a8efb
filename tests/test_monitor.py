"""The online k-NN monitor: its logged top-1@20 is what `vicregl knn` computes on the checkpoint of that
epoch, training with it ends bit-identical to training without it, bad --monitor-data fails up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vicregl_cli.cli import app
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.config import load_config
from vicregl_cli.pretrain.loop import train
from vicregl_cli.pretrain_hooks import monitor_hooks

torch.set_num_threads(1)


def demo_config(synthetic: Path, out: Path, **changes):
    """The demo preset, 2 epochs of 48 images at batch 16; the monitor on the same images' train / val."""
    values = dict(data=str(synthetic / "train"), out=str(out), epochs=2, warmup_epochs=1, batch_size=16,
                  log_every=2, checkpoint_every=1, num_workers=0)  # fmt: skip
    values.update(changes)
    return load_config("demo", values)


def test_monitor_equals_knn_on_the_checkpoint_and_leaves_training_bit_identical(synthetic, tmp_path):
    plain = tmp_path / "plain"
    train(demo_config(synthetic, plain), device="cpu")
    monitored = tmp_path / "monitored"
    config = demo_config(synthetic, monitored, monitor_data=str(synthetic))
    result = train(config, device="cpu", hooks=monitor_hooks(config))

    lines = [json.loads(line) for line in (monitored / "stats.jsonl").read_text().splitlines()]
    monitor_lines = [line for line in lines if "knn_top1@20" in line]
    assert [(line["epoch"], line["step"]) for line in monitor_lines] == [(0, 3), (1, 6)]
    assert monitor_lines == [record for record in result.stats if "knn_top1@20" in record]

    expected = torch.load(plain / "checkpoint.pth", weights_only=True)
    actual = torch.load(monitored / "checkpoint.pth", weights_only=True)
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    for index, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            other = actual["optimizer"]["state"][index][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (index, name)
    assert torch.equal(expected["rng"][0]["torch"], actual["rng"][0]["torch"])  # the stream goes on unchanged
    plain_lines = [json.loads(line) for line in (plain / "stats.jsonl").read_text().splitlines()]
    training_lines = [line for line in lines if "knn_top1@20" not in line]
    for line in (*plain_lines, *training_lines):
        del line["samples_per_s"]
    assert training_lines == plain_lines

    # `vicregl knn` with the monitor's settings (k 20; views: the 32 px crop, resize 36) on the checkpoint
    out = tmp_path / "knn"
    invoked = CliRunner().invoke(app, [
        "knn", "--weights", str(monitored / "checkpoint.pth"), "--data", str(synthetic), "--out", str(out),
        "--k", "20", "--image-size", "32", "--resize", "36", "--workers", "0", "--no-cache",
        "--device", "cpu",
    ])  # fmt: skip
    assert invoked.exit_code == 0, invoked.output
    record = json.loads((out / "knn" / "result.json").read_text())
    assert record["metrics"]["top1@20"] == monitor_lines[-1]["knn_top1@20"]
    assert record["metrics"]["top5@20"] == monitor_lines[-1]["knn_top5@20"]
    assert 0.0 < record["metrics"]["top5@20"] < 100.0  # neither degenerate end: the comparison can fail


def test_monitor_every_two_epochs_and_after_the_last(synthetic, tmp_path):
    config = demo_config(synthetic, tmp_path, epochs=5, monitor_data=str(synthetic), monitor_every=2)
    monitor = monitor_hooks(config).monitor
    assert [epoch for epoch in range(1, 6) if monitor.due(epoch, 5)] == [2, 4, 5]
    assert (monitor.settings.ks, monitor.settings.image_size, monitor.settings.resize) == ((20,), 32, 36)
    assert monitor_hooks(demo_config(synthetic, tmp_path)).monitor is None


def test_bad_monitor_data_fails_before_training(synthetic, tmp_path):
    def pretrain(*arguments: str) -> None:
        invoked = CliRunner().invoke(app, ["pretrain", "--config", "demo", "--data", str(synthetic / "train"),
                                           "--device", "cpu", *arguments])  # fmt: skip
        assert invoked.exit_code == 1 and isinstance(invoked.exception, UserError), invoked.output
        raise invoked.exception

    with pytest.raises(UserError, match="does not exist|no class folders|not a folder"):
        pretrain("--out", str(tmp_path / "a"), "--monitor-data", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="monitor-every"):
        pretrain("--out", str(tmp_path / "b"), "--monitor-data", str(synthetic), "--monitor-every", "0")
    with pytest.raises(UserError, match="no monitor was given"):  # the plain API cannot drop the monitor
        train(demo_config(synthetic, tmp_path / "c", monitor_data=str(synthetic)), device="cpu")
    assert not any((tmp_path / name).exists() for name in "abc")
