"""Run an exported config on detectron2 from here: the launcher command line, the launcher as a subprocess
(so this process never imports detectron2), and the evaluation read back from detectron2's metrics.json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

# detectron2's `bbox/` and `segm/` metric names -> our keys (the torchvision engine's, docs/detect.md):
# box AP, AP50, AP75 (the VOC evaluator logs these three), mask APm, APm50, APm75, size splits spelled out.
METRIC_KEYS = {
    **{f"bbox/{name}": name for name in ("AP", "AP50", "AP75")},
    **{f"segm/{name}": name.replace("AP", "APm") for name in ("AP", "AP50", "AP75")},
    **{f"{task}/AP{size[0]}": f"{prefix}_{size}" for task, prefix in (("bbox", "AP"), ("segm", "APm"))
       for size in ("small", "medium", "large")},
}  # fmt: skip


def detectron2_importable() -> bool:
    """Whether detectron2 can be imported here (looked up without importing it)."""
    return importlib.util.find_spec("detectron2") is not None


def launch_command(config: Path, num_gpus: int) -> list[str]:
    """The launcher command line for one config; `--resume` continues from the last checkpoint in its
    OUTPUT_DIR when there is one (a requeued or re-run job), else starts from MODEL.WEIGHTS."""
    return [
        sys.executable,
        "-m",
        "vicregl_cli.transfer.detectron2_train",
        "--config",
        str(config),
        "--num-gpus",
        str(num_gpus),
        "--resume",
    ]


def read_detectron2_metrics(output_dir: Path) -> dict[str, float]:
    """The metrics of the last evaluation detectron2's JSONWriter logged in OUTPUT_DIR/metrics.json, under
    METRIC_KEYS' names: AP, AP50, AP75 (VOC: the VOC07 evaluator's); on COCO also APm, APm50, APm75 (masks)
    and the size splits (a split without objects, NaN or -1, is left out)."""
    metrics_file = Path(output_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise RuntimeError(f"detectron2 wrote no {metrics_file}; see its log in {output_dir}")
    found: dict[str, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "bbox/AP" in record:
            found = {key: float(record[name]) for name, key in METRIC_KEYS.items() if name in record}
            found = {key: value for key, value in found.items() if value >= 0}
    if not found:
        raise RuntimeError(f"{metrics_file} holds no bbox/AP: did the evaluation run?")
    return found


def train(config: Path, num_gpus: int, output_dir: Path) -> dict[str, float]:
    """Train and evaluate one config with the launcher (a subprocess), then read its metrics back."""
    subprocess.run(launch_command(config, num_gpus), check=True)
    return read_detectron2_metrics(output_dir)
