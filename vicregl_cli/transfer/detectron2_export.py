"""A backbone in detectron2's model-zoo `.pkl` format, next to the config that names it (no detectron2).

The `.pkl` is a plain pickle of numpy arrays with `matching_heuristics`, so that detectron2 loads it as is and
aligns `resN.*` with `backbone.resN` and the C4 head's `roi_heads.res5`."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.errors import UserError
from vicregl_cli.transfer.detectron2_config import DATASET_PROTOCOL, build_config, write_config

TORCHVISION_KEY = re.compile(r"^(conv1|bn1|layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01]))\.(\w+)$")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the weights file, the config, and the number of tensors exported."""

    weights: Path
    config: Path
    num_tensors: int


def detectron2_name(key: str) -> str:
    """torchvision ResNet key -> detectron2 key (`layer1.0.bn1.weight` -> `res2.0.conv1.norm.weight`)."""
    match = TORCHVISION_KEY.match(key)
    if match is None:
        raise UserError(
            f"backbone key {key!r} is not a torchvision ResNet key; only ResNets export to detectron2"
        )
    module, stage, block, part, leaf = match.groups()
    if module == "conv1":
        return f"stem.conv1.{leaf}"
    if module == "bn1":
        return f"stem.conv1.norm.{leaf}"
    if part.startswith("bn"):
        part = f"conv{part[2:]}.norm"
    elif part == "downsample.0":
        part = "shortcut"
    elif part == "downsample.1":
        part = "shortcut.norm"
    return f"res{int(stage) + 1}.{block}.{part}.{leaf}"


def to_detectron2_state(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torchvision-named ResNet state dict under detectron2's names, as numpy (BN step counters dropped)."""
    return {
        detectron2_name(key): tensor.detach().cpu().numpy()
        for key, tensor in state_dict.items()
        if not key.endswith("num_batches_tracked")
    }


def write_model_zoo_pkl(path: Path, state: dict[str, np.ndarray]) -> Path:
    """Write detectron2's model-zoo pickle: {"model", "__author__", "matching_heuristics": True}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": state, "__author__": "vicregl", "matching_heuristics": True}
    with open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def write_detectron2_files(
    weights: WeightsRef,
    folder: Path,
    *,
    config_name: str,
    output_dir: Path,
    dataset: str,
    data_root: Path,
    class_names: list[str] | None,
    batch_size: int,
    base_lr: float | None,
    iters: int | None,
) -> ExportResult:
    """`folder/backbone.pkl` from the weights in memory (`weights.state_dict()`, no file read) and
    `folder/config_name`, the dataset's benchmark config naming it, with OUTPUT_DIR `output_dir`."""
    state = to_detectron2_state(weights.state_dict())
    pkl = write_model_zoo_pkl(Path(folder) / "backbone.pkl", state)
    config = build_config(
        DATASET_PROTOCOL[dataset],
        dataset=dataset,
        data_root=str(Path(data_root).resolve()),
        weights=str(pkl.resolve()),
        backbone_name=weights.backbone,
        output_dir=str(Path(output_dir).resolve()),
        class_names=class_names,
        batch_size=batch_size,
        base_lr=base_lr,
        iters=iters,
    )
    config_path = write_config(Path(folder) / config_name, config)
    return ExportResult(weights=pkl, config=config_path, num_tensors=len(state))
