"""Run an exported config on detectron2 from here: the launcher command line, the launcher as a subprocess
(so this process never imports detectron2), and the evaluation read back from detectron2's metrics.json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval's; the VOC evaluator logs the first 3


def detectron2_importable() -> bool:
    """Whether detectron2 can be imported here (looked up without importing it)."""
    return importlib.util.find_spec("detectron2") is not None


def launch_command(config: Path, num_gpus: int) -> list[str]:
    """The launcher command line for one config."""
    return [
        sys.executable,
        "-m",
        "vicregl_cli.transfer.detectron2_train",
        "--config",
        str(config),
        "--num-gpus",
        str(num_gpus),
    ]


def read_detectron2_metrics(output_dir: Path) -> dict[str, float]:
    """The box metrics (and `segm_*` mask metrics) of the last evaluation detectron2's JSONWriter logged in
    OUTPUT_DIR/metrics.json: AP, AP50, AP75 (VOC: the VOC07 evaluator's), plus APs, APm, APl on COCO."""
    metrics_file = Path(output_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise RuntimeError(f"detectron2 wrote no {metrics_file}; see its log in {output_dir}")
    found: dict[str, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "bbox/AP" in record:
            found = {
                prefix + name: float(record[f"{task}/{name}"])
                for task, prefix in (("bbox", ""), ("segm", "segm_"))
                for name in COCO_KEYS
                if f"{task}/{name}" in record
            }
    if not found:
        raise RuntimeError(f"{metrics_file} holds no bbox/AP: did the evaluation run?")
    return found


def train(config: Path, num_gpus: int, output_dir: Path) -> dict[str, float]:
    """Train and evaluate one config with the launcher (a subprocess), then read its metrics back."""
    subprocess.run(launch_command(config, num_gpus), check=True)
    return read_detectron2_metrics(output_dir)
