"""The built wheel, installed non-editable into a fresh venv and run from outside the checkout
(scripts/check_wheel.sh): packaged presets and templates are found without a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_wheel_runs_presets_pretrain_and_segment_export(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # only the wheel may provide vicregl_cli
    done = subprocess.run(["bash", str(REPO / "scripts" / "check_wheel.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"vicregl_cli imported from {tmp_path}/venv/" in done.stdout
    assert "resnet50_alpha0.75" in done.stdout and "first_batch_loss" in done.stdout
    config = tmp_path / "run" / "segment" / "lr=0.1" / "config.py"
    assert config.is_file() and "data_root" in config.read_text()
