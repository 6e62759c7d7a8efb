"""TensorBoard: pretraining's events read back (tensorboard's own reader) equal stats.jsonl, also after a
crash and a resume; semi, linear and k-NN write their curves / final metrics in RUN/tb; so does mmseg."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer import event_file_writer
from torch import nn

from vicregl_cli.backbones import resolve_weights
from vicregl_cli.evaluate import knn, linear, semi
from vicregl_cli.pretrain.config import load_config
from vicregl_cli.pretrain.loop import train
from vicregl_cli.sweep import run_protocol
from vicregl_cli.tensorboard import ScalarLog, log_metrics

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
DEMO = "demo"  # the packaged preset


def demo_config(data: Path, out: Path, **changes):
    """The demo preset, 2 epochs of 48 images at batch 16 (3 steps each), a stats line every step."""
    values = dict(data=str(data), out=str(out), epochs=2, warmup_epochs=1, batch_size=16, log_every=1,
                  checkpoint_every=1, num_workers=0)  # fmt: skip
    values.update(changes)
    return load_config(DEMO, values)


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in `folder` as tensorboard reads it (all sessions, purged steps dropped)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def stats_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """stats.jsonl as the series TensorBoard should hold: pretrain/<key> -> (step, value as float32)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "stats.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("epoch", "step"):
                series.setdefault(f"pretrain/{key}", []).append((record["step"], float(np.float32(value))))
    return series


def test_demo_pretraining_events_equal_stats_jsonl(synthetic, tmp_path):
    run = tmp_path / "run"
    train(demo_config(synthetic / "train", run), device="cpu")
    expected = stats_series(run)
    assert [step for step, _ in expected["pretrain/loss"]] == [1, 2, 3, 4, 5, 6]
    for key in ("global_inv", "local_cov", "lr", "emb_std", "repr_corr", "probe_top1", "samples_per_s"):
        assert f"pretrain/{key}" in expected, key
    assert read_scalars(run / "tb") == expected


def writer_clock(monkeypatch, second: int, counter: int) -> None:
    """The event writer's wall clock stopped at `second` and its per-process file counter set to `counter`:
    the two parts of an event file's name that order a folder's files."""
    monkeypatch.setattr(event_file_writer, "time", SimpleNamespace(time=lambda: float(second)))
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(counter))


# (crashed session's second and counter, resumed session's second and counter); None: the real clock
CLOCKS = {
    "real clock": None,
    "same second, counter 9 then 10": ((2_000_000_000, 9), (2_000_000_000, 10)),  # "10" sorts before "9"
    "resumed on a node whose clock is behind": ((2_000_000_000, 1), (1_000_000_000, 2)),
}


@pytest.mark.parametrize("clock", CLOCKS.values(), ids=CLOCKS.keys())
def test_a_crash_then_resume_shows_every_step_once(synthetic, tmp_path, monkeypatch, clock):
    straight = tmp_path / "straight"
    train(demo_config(synthetic / "train", straight), device="cpu")

    def crash_at_step_5(step: int, model: nn.Module) -> None:
        if step == 5:  # steps 1-4 are logged, the last checkpoint is at step 3 (end of epoch 0)
            raise RuntimeError("node lost")

    run = tmp_path / "crashed"
    if clock is not None:
        writer_clock(monkeypatch, *clock[0])
    with pytest.raises(RuntimeError, match="node lost"):
        from vicregl_cli.pretrain.loop import Hooks

        train(demo_config(synthetic / "train", run), device="cpu", hooks=Hooks(crash_at_step_5))
    lines = (run / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert [step for step, _ in read_scalars(run / "tb")["pretrain/loss"]] == [1, 2, 3, 4]

    if clock is not None:
        writer_clock(monkeypatch, *clock[1])
    train(demo_config(synthetic / "train", run), device="cpu")
    resumed = stats_series(run)
    assert [step for step, _ in resumed["pretrain/loss"]] == [1, 2, 3, 4, 5, 6]
    assert read_scalars(run / "tb") == resumed
    # the resume is exact: every logged value but the throughput is the uninterrupted run's
    reference = stats_series(straight)
    del reference["pretrain/samples_per_s"], resumed["pretrain/samples_per_s"]
    assert resumed == reference


def test_scalar_log_writes_numbers_only_and_nothing_when_disabled(tmp_path):
    with ScalarLog(tmp_path / "on") as log:
        log.scalars({"a": 1.5, "b": 2, "flag": True, "name": "x"}, step=3, prefix="p/")
    assert read_scalars(tmp_path / "on" / "tb") == {"p/a": [(3, 1.5)], "p/b": [(3, 2.0)]}
    with ScalarLog(tmp_path / "off", enabled=False) as log:
        log.scalars({"a": 1.0}, step=1)
    log_metrics(None, {"top1": 50.0})
    assert not (tmp_path / "off").exists()


def test_semi_and_knn_write_curves_and_final_metrics(synthetic, tmp_path):
    weights = resolve_weights("random", "resnet10_small_w16")
    config = semi.SemiConfig(data=synthetic, percent=50, epochs=2, batch_size=8, image_size=32, resize=36,
                             num_workers=0, lrs_backbone=(0.01,), lrs_head=(0.1,))  # fmt: skip
    (record,) = run_protocol(semi, config, weights, tmp_path / "semi")
    scalars = read_scalars(tmp_path / "semi" / record["run"] / "tb")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    lr_head = [value for _, value in scalars["train/lr_head"]]
    np.testing.assert_allclose(lr_head, [0.1, 0.1 * semi.cosine_factor(1, 2)], rtol=1e-6)
    val_top1 = [value for _, value in scalars["val/top1"]]
    assert scalars["metrics/top1"] == [(0, pytest.approx(max(val_top1)))]  # written by the sweep runner
    assert record["metrics"]["top1"] == pytest.approx(max(val_top1), abs=1e-4)
    assert all(0.0 < value for _, value in scalars["train/loss"])

    knn_config = knn.KnnConfig(data=synthetic, ks=(5, 20), image_size=32, resize=36, num_workers=0,
                               train_chunk_size=None)  # fmt: skip
    (record,) = run_protocol(knn, knn_config, weights, tmp_path / "knn")
    scalars = read_scalars(tmp_path / "knn" / "knn" / "tb")
    metrics = record["metrics"]
    expected = {f"metrics/{name}": [(0, float(np.float32(value)))] for name, value in metrics.items()}
    assert scalars == expected and "metrics/top1@20" in scalars

    linear_config = linear.LinearConfig(data=synthetic, lrs=(0.1,), epochs=2, batch_size=16, image_size=32,
                                        resize=36, num_workers=0)  # fmt: skip
    (record,) = run_protocol(linear, linear_config, weights, tmp_path / "linear")
    scalars = read_scalars(tmp_path / "linear" / record["run"] / "tb")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    np.testing.assert_allclose([value for _, value in scalars["train/lr"]], [0.1, 0.05], rtol=1e-6)  # cosine
    val_top1 = [value for _, value in scalars["val/top1"]]
    assert scalars["metrics/top1"] == [(0, pytest.approx(max(val_top1)))]
    assert record["metrics"]["top1"] == pytest.approx(max(val_top1), abs=1e-4)

    cached = dataclasses.replace(linear_config, lrs=(0.1, 1.0), cached=True)
    records = run_protocol(linear, cached, weights, tmp_path / "cached")
    for record, lr in zip(records, (0.1, 1.0), strict=True):  # one point, two member runs, a curve each
        scalars = read_scalars(tmp_path / "cached" / record["run"] / "tb")
        assert scalars["metrics/top1"] == [(0, pytest.approx(record["metrics"]["top1"]))]
        np.testing.assert_allclose([value for _, value in scalars["train/lr"]], [lr, lr / 2], rtol=1e-6)
        val_top1 = [value for _, value in scalars["val/top1"]]
        assert len(scalars["train/loss"]) == 2 and max(val_top1) == pytest.approx(record["metrics"]["top1"])


def test_segment_run_logs_its_validation_metrics_to_the_run_folder_tb(tmp_path):
    from vicregl_cli.data.synthetic import generate
    from vicregl_cli.transfer import segment
    from vicregl_cli.transfer.segment_plan import SegmentSettings

    generate(tmp_path / "synth", num_train=12, num_val=12, image_size=48, seed=0, workers=1)
    settings = SegmentSettings(dataset="voc", data_root=tmp_path / "synth" / "VOC2012", iters=2, batch_size=2,
                               crop_size=48, workers=0, lrs=(0.01,))  # fmt: skip
    (record,) = run_protocol(segment, settings, resolve_weights("random", "resnet18"), tmp_path / "seg")
    folder = tmp_path / "seg" / record["run"]
    assert "TensorboardVisBackend" in (folder / "config.py").read_text()
    scalars = read_scalars(folder / "tb")
    for name in ("mIoU", "aAcc", "mAcc"):  # mmengine logs each validation at its iteration
        assert scalars[name] == [(2, pytest.approx(record["metrics"][name], abs=0.006))], name
