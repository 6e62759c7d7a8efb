"""Fixtures shared by several test files: the synthetic datasets (vicregl_cli/data/synthetic.py) they read.
Each is generated once per test module that asks for it, so no file sees what another one wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from vicregl_cli.data.synthetic import generate


def synthetic_dataset(factory: pytest.TempPathFactory, num_train: int, num_val: int, size: int) -> Path:
    """A fresh synthetic dataset (seed 0): ROOT/classification (ImageFolder train/ val/) and ROOT/VOC2012."""
    root = factory.mktemp("synth")
    generate(root, num_train=num_train, num_val=num_val, image_size=size, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """classification/ of 48 + 24 images of 48 px: the demo preset's miniature (3 steps of 16 per epoch)."""
    return synthetic_dataset(tmp_path_factory, 48, 24, 48) / "classification"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """classification/ of 36 + 24 images of 40 px: the evaluation protocols (k-NN, linear)."""
    return synthetic_dataset(tmp_path_factory, 36, 24, 40) / "classification"


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """classification/train of 24 images of 64 px: a pretraining ImageFolder (3 steps of 8 per epoch)."""
    return synthetic_dataset(tmp_path_factory, 24, 12, 64) / "classification" / "train"


@pytest.fixture(scope="module")
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOC2012/ of 12 + 12 images of 64 px: segmentation and detection."""
    return synthetic_dataset(tmp_path_factory, 12, 12, 64) / "VOC2012"
