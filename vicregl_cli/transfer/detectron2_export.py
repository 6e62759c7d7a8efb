"""A backbone in detectron2's model-zoo `.pkl` format, next to the config that names it (no detectron2).

The `.pkl` (vicregl_cli/export.py, the writer `vicregl export --to detectron2` uses) is a plain pickle of
numpy arrays with `matching_heuristics`, so that detectron2 loads it as is and aligns `resN.*` with
`backbone.resN` and the C4 head's `roi_heads.res5`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.export import check_target, to_detectron2_state, write_model_zoo_pkl
from vicregl_cli.transfer.detectron2_config import (
    DATASET_PROTOCOL,
    build_config,
    linear_det_config,
    write_config,
)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the weights file, the config, and the number of tensors exported."""

    weights: Path
    config: Path
    num_tensors: int


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
    frozen: bool = False,
) -> ExportResult:
    """`folder/backbone.pkl` from the weights in memory (`weights.state_dict()`, no file read) and
    `folder/config_name`, the dataset's benchmark config naming it, with OUTPUT_DIR `output_dir` (`frozen`:
    with Linear Det.'s freeze settings)."""
    check_target("detectron2", weights.backbone)
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
    if frozen:
        config = linear_det_config(config)
    config_path = write_config(Path(folder) / config_name, config)
    return ExportResult(weights=pkl, config=config_path, num_tensors=len(state))
