"""benchmarks/gpu_pretrain.py --device cpu --tiny: every path of the GPU benchmark runs on a CPU in seconds
and writes the JSON that docs/pretrain.md's throughput table is read from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_pretrain.py"
MEASURES = ("samples_per_s", "step_ms", "peak_memory_gb")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench") / "tiny.json"
    command = [sys.executable, str(BENCHMARK), "--device", "cpu", "--tiny", "--workers", "0,1",
               "--out", str(out)]  # fmt: skip
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.read_text()), printed


def check_row(row: dict, batch: int) -> None:
    assert all(row[name] > 0 for name in MEASURES), row
    assert row["syncs_per_step"] is None  # a CPU has no device to wait for: not counted
    assert row["samples_per_s"] * row["step_ms"] / 1e3 == pytest.approx(batch)


def test_tiny_run_reports_every_preset_and_feeding(tiny_run):
    report, printed = tiny_run
    assert report["tiny"] is True and report["device_name"] == "cpu" and report["precision"] == "fp32"
    assert set(report["presets"]) == {"resnet50", "convnext_small"}
    assert report["presets"]["resnet50"]["crops"] == ["2 x 32"]
    assert report["presets"]["convnext_small"]["crops"] == ["2 x 32", "2 x 16"]
    for name, result in report["presets"].items():
        batch = result["batch_per_gpu"]
        assert batch == 4
        check_row(result["on_device"], batch)
        check_row(result["vicreg_on_device"], batch)
        assert [row["workers"] for row in result["loader"]] == [0, 1]
        for row in result["loader"]:
            check_row(row, batch)
        time_ratio = result["on_device"]["step_ms"] / result["vicreg_on_device"]["step_ms"]
        assert result["vicregl_over_vicreg_time"] == pytest.approx(time_ratio) and time_ratio > 0
        assert result["vicregl_over_vicreg_memory"] > 0
        assert result["colour_on"] == "device"  # the default path
        assert f"{name:16s}colour on device; VICRegL / VICReg: time" in printed
    assert "samples/s/GPU" in printed and "(--tiny: not GPU figures)" in printed
