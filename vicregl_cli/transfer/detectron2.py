"""Hand a backbone to detectron2: the model-zoo `.pkl` export and the benchmark configs (no detectron2).

The `.pkl` is detectron2's model-zoo format, a plain pickle of numpy arrays with `matching_heuristics`, so
that detectron2 loads it as is and aligns `resN.*` with `backbone.resN` and the C4 head's `roi_heads.res5`.
The configs are self-contained YAML files (no `_BASE_`) that `detectron2_train.py` reads; their `VICREGL`
section names the dataset layout the launcher registers.
"""

from __future__ import annotations

import functools
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from vicregl_cli.errors import UserError

EXTRA_NORM_HEAD = "Res5ROIHeadsExtraNorm"
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]  # torchvision's ImageNet mean x 255, RGB order
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]
C4_DEPTHS = {"resnet50": 50, "resnet101": 101, "resnet152": 152, "resnet50x2": 50, "resnet50x4": 50}
VOC_MIN_SIZES = tuple(range(480, 801, 32))
COCO_MIN_SIZES = tuple(range(640, 801, 32))
PROTOCOLS = ("voc_R_50_C4_24k", "coco_R_50_C4_1x", "coco_R_50_FPN_1x", "coco_10pct_R_50_FPN_1x")
DATASET_PROTOCOL = {
    "voc": "voc_R_50_C4_24k",
    "voc0712": "voc_R_50_C4_24k",
    "coco": "coco_R_50_C4_1x",
    "coco-10pct": "coco_10pct_R_50_FPN_1x",
}
TORCHVISION_KEY = re.compile(r"^(conv1|bn1|layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01]))\.(\w+)$")


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the weights file, the config, and the number of tensors exported."""

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
    exported = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        exported[detectron2_name(key)] = tensor.detach().cpu().numpy()
    return exported


def write_model_zoo_pkl(path: Path, state: dict[str, np.ndarray]) -> Path:
    """Write detectron2's model-zoo pickle: {"model", "__author__", "matching_heuristics": True}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": state, "__author__": "vicregl", "matching_heuristics": True}
    with open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def resnet_geometry(backbone_name: str) -> dict:
    """detectron2 `MODEL.RESNETS` entries of a registry ResNet (bottleneck ResNets only: detectron2's res5
    ROI head and its depth table have no basic-block or depth-200 variants)."""
    if backbone_name not in C4_DEPTHS:
        raise UserError(
            f"backbone {backbone_name!r} has no detectron2 counterpart; the Faster/Mask R-CNN benchmark "
            f"configs take {sorted(C4_DEPTHS)} (use `--engine torchvision` for other ResNets)"
        )
    widen = int(backbone_name.split("x")[1]) if "x" in backbone_name else 1
    return {
        "DEPTH": C4_DEPTHS[backbone_name],
        "WIDTH_PER_GROUP": 64 * widen,
        "STEM_OUT_CHANNELS": 64 * widen,
        "RES2_OUT_CHANNELS": 256 * widen,
    }


def _solver(iters: int, steps: tuple[int, int], warmup: int, batch_size: int, base_lr: float) -> dict:
    return {
        "IMS_PER_BATCH": batch_size,
        "BASE_LR": base_lr,
        "STEPS": list(steps),
        "MAX_ITER": iters,
        "WARMUP_ITERS": warmup,
        "CHECKPOINT_PERIOD": 5000,
    }


def _voc_datasets(dataset: str) -> dict:
    if dataset == "voc":
        return {"TRAIN": ["vicregl_voc_train"], "TEST": ["vicregl_voc_val"]}
    return {
        "TRAIN": ["vicregl_voc_2007_trainval", "vicregl_voc_2012_trainval"],
        "TEST": ["vicregl_voc_2007_test"],
    }


def _coco_datasets(dataset: str) -> dict:
    train = "vicregl_coco_2017_train_10pct" if dataset == "coco-10pct" else "vicregl_coco_2017_train"
    return {"TRAIN": [train], "TEST": ["vicregl_coco_2017_val"]}


def build_config(
    protocol: str,
    *,
    dataset: str,
    data_root: str,
    weights: str,
    backbone_name: str = "resnet50",
    output_dir: str = "./output",
    class_names: list[str] | None = None,
    batch_size: int = 16,
    base_lr: float | None = None,
    iters: int | None = None,
) -> dict:
    """The benchmark config of `protocol` as a dict (MoCo / DenseCL lineage, RGB + torchvision statistics).

    `base_lr` defaults to 0.02 x batch/16; `iters` rescales the schedule (steps keep their fractions, warm-up
    is capped at 10 % of it).
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown detectron2 protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    is_voc = protocol.startswith("voc")
    resnets = {"NORM": "SyncBN", "STRIDE_IN_1X1": False, **resnet_geometry(backbone_name)}
    if is_voc:
        full_iters, full_steps, full_warmup = 24000, (18000, 22000), 100
    else:
        full_iters, full_steps, full_warmup = 90000, (60000, 80000), 1000
    total = full_iters if iters is None else iters
    steps = tuple(round(step * total / full_iters) for step in full_steps)
    warmup = min(full_warmup, max(total // 10, 1)) if iters is not None else full_warmup
    lr = 0.02 * batch_size / 16 if base_lr is None else base_lr
    model: dict = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": weights,
        "MASK_ON": not is_voc,
        "PIXEL_MEAN": TORCHVISION_PIXEL_MEAN,
        "PIXEL_STD": TORCHVISION_PIXEL_STD,
        "RESNETS": resnets,
    }
    if "FPN" in protocol:
        resnets["OUT_FEATURES"] = ["res2", "res3", "res4", "res5"]
        model.update(
            {
                "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0},
                "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "NORM": "SyncBN"},
                "ANCHOR_GENERATOR": {
                    "SIZES": [[32], [64], [128], [256], [512]],
                    "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
                },
                "RPN": {
                    "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
                    "PRE_NMS_TOPK_TRAIN": 2000,
                    "PRE_NMS_TOPK_TEST": 1000,
                    "POST_NMS_TOPK_TRAIN": 1000,
                    "POST_NMS_TOPK_TEST": 1000,
                },
                "ROI_HEADS": {
                    "NAME": "StandardROIHeads",
                    "IN_FEATURES": ["p2", "p3", "p4", "p5"],
                    "NUM_CLASSES": 80,
                },
                "ROI_BOX_HEAD": {
                    "NAME": "FastRCNNConvFCHead",
                    "NUM_CONV": 4,
                    "NUM_FC": 1,
                    "NORM": "SyncBN",
                    "POOLER_RESOLUTION": 7,
                },
                "ROI_MASK_HEAD": {
                    "NAME": "MaskRCNNConvUpsampleHead",
                    "NUM_CONV": 4,
                    "NORM": "SyncBN",
                    "POOLER_RESOLUTION": 14,
                },
            }
        )
    else:
        num_classes = len(class_names) if class_names is not None else (20 if is_voc else 80)
        model.update(
            {
                "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 0},
                "RPN": {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000},
                "ROI_HEADS": {"NAME": EXTRA_NORM_HEAD, "NUM_CLASSES": num_classes},
            }
        )
        resnets["NORM"] = "naiveSyncBN"  # the C4 benchmark's choice (MoCo: SyncBN varied more between runs)
    min_sizes = VOC_MIN_SIZES if is_voc else COCO_MIN_SIZES
    return {
        "VERSION": 2,
        "MODEL": model,
        "INPUT": {
            "FORMAT": "RGB",
            "MIN_SIZE_TRAIN": list(min_sizes),
            "MIN_SIZE_TEST": 800,
            "MAX_SIZE_TRAIN": 1333,
            "MAX_SIZE_TEST": 1333,
        },
        "DATASETS": _voc_datasets(dataset) if is_voc else _coco_datasets(dataset),
        "SOLVER": _solver(total, steps, warmup, batch_size, lr),
        "TEST": {"PRECISE_BN": {"ENABLED": True, "NUM_ITER": 200}, "EVAL_PERIOD": 0},
        "OUTPUT_DIR": output_dir,
        "VICREGL": {
            "DATASET": dataset,
            "DATA_ROOT": data_root,
            "CLASS_NAMES": list(class_names) if class_names is not None else [],
            "SUBSET_FRACTION": 0.1 if dataset == "coco-10pct" else 1.0,
            "SUBSET_SEED": 0,
        },
    }


def write_config(path: Path, config: dict) -> Path:
    """Write a config dict as YAML (block style, keys in insertion order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    return path


def template_configs() -> dict[str, dict]:
    """The configs kept in `configs/detect/` (weights and data root to fill in)."""
    common = {"data_root": "datasets", "weights": "backbone.pkl"}
    return {
        "voc0712_R_50_C4_24k.yaml": build_config("voc_R_50_C4_24k", dataset="voc0712", **common),
        "coco_R_50_C4_1x.yaml": build_config("coco_R_50_C4_1x", dataset="coco", **common),
        "coco_R_50_FPN_1x.yaml": build_config("coco_R_50_FPN_1x", dataset="coco", **common),
        "coco_10pct_R_50_FPN_1x.yaml": build_config("coco_10pct_R_50_FPN_1x", dataset="coco-10pct", **common),
    }


def export(
    backbone_name: str | None,
    weights: Path | None,
    out_dir: Path,
    *,
    dataset: str,
    data_root: Path,
    class_names: list[str] | None = None,
    batch_size: int = 16,
    base_lr: float | None = None,
    iters: int | None = None,
) -> ExportResult:
    """Load a backbone through the registry; write `backbone.pkl` and the dataset's config into out_dir."""
    from vicregl_cli.backbones import load_backbone

    if dataset not in DATASET_PROTOCOL:
        raise UserError(f"unknown detection dataset {dataset!r}; choose one of {sorted(DATASET_PROTOCOL)}")
    model = load_backbone(backbone_name, weights)
    if model.spec.family != "resnet":
        raise UserError(
            f"backbone {model.spec.name!r} is a {model.spec.family}; the C4 / FPN configs need a ResNet"
        )
    resnet_geometry(model.spec.name)
    state = to_detectron2_state(model.state_dict())
    out_dir = Path(out_dir)
    weights_path = write_model_zoo_pkl(out_dir / "backbone.pkl", state)
    config = build_config(
        DATASET_PROTOCOL[dataset],
        dataset=dataset,
        data_root=str(Path(data_root).resolve()),
        weights=str(weights_path.resolve()),
        backbone_name=model.spec.name,
        output_dir=str((out_dir / "detectron2").resolve()),
        class_names=class_names,
        batch_size=batch_size,
        base_lr=base_lr,
        iters=iters,
    )
    config_path = write_config(out_dir / f"{DATASET_PROTOCOL[dataset]}.yaml", config)
    return ExportResult(weights=weights_path, config=config_path, num_tensors=len(state))


def detectron2_importable() -> bool:
    """Whether detectron2 can be imported here (looked up without importing it)."""
    import importlib.util

    return importlib.util.find_spec("detectron2") is not None


def launch_command(config: Path, num_gpus: int) -> list[str]:
    """The launcher command line for one config."""
    import sys

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
    """AP, AP50, AP75 of the last evaluation detectron2's JSONWriter logged in OUTPUT_DIR/metrics.json."""
    import json

    metrics_file = Path(output_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise RuntimeError(f"detectron2 wrote no {metrics_file}; see its log in {output_dir}")
    found: dict[str, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "bbox/AP" in record:
            found = {name: float(record[f"bbox/{name}"]) for name in ("AP", "AP50", "AP75")}
            found.update(
                {
                    f"segm_{n}": float(record[f"segm/{n}"])
                    for n in ("AP", "AP50", "AP75")
                    if f"segm/{n}" in record
                }
            )
    if not found:
        raise RuntimeError(f"{metrics_file} holds no bbox/AP: did the evaluation run?")
    return found


def detectron2_run_point(point, run_dir: Path) -> dict:
    """One sweep point on detectron2: write the point's config next to the shared `.pkl`, run the launcher
    as a subprocess, read the evaluation back from metrics.json."""
    import subprocess
    import time

    from vicregl_cli.report import make_result

    params = dict(point.params)
    run_dir = Path(run_dir)
    config = build_config(
        DATASET_PROTOCOL[params["dataset"]],
        dataset=params["dataset"],
        data_root=params["data_root"],
        weights=params["pkl"],
        backbone_name=params["backbone"],
        output_dir=str(run_dir.resolve()),
        class_names=params["class_names"],
        batch_size=params["batch_size"],
        base_lr=params["lr"],
        iters=params["iters"],
    )
    config_path = write_config(run_dir / "config.yaml", config)
    started = time.perf_counter()
    subprocess.run(launch_command(config_path, params["num_gpus"]), check=True)
    return make_result(
        protocol=f"detect-detectron2-{DATASET_PROTOCOL[params['dataset']]}",
        backbone=params["backbone"],
        weights=params["weights"],
        dataset=f"{params['dataset']}:{params['data_root']}",
        params={**config["SOLVER"], "engine": "detectron2", "config": str(config_path)},
        metrics=read_detectron2_metrics(run_dir),
        wall_time_s=time.perf_counter() - started,
    )


def run_detect(
    *,
    backbone: str | None,
    weights: Path | None,
    dataset: str,
    data_root: Path,
    out: Path,
    engine: str | None,
    lrs: list[float],
    settings,
    iters: int | None = None,
    export_only: bool = False,
    num_gpus: int = 8,
) -> list[dict] | ExportResult:
    """`vicregl detect`: check the inputs, pick the engine, then export only, or sweep the lrs on the engine.

    `settings` is a tv_detection.DetectionSettings (batch size, sizes, budgets ...); with detectron2 only its
    batch_size applies. `iters` None keeps each protocol's schedule (24k VOC, 90k COCO)."""
    from dataclasses import asdict, replace

    from vicregl_cli.backbones import get_spec
    from vicregl_cli.sweep import SweepPoint, point_name, run_sweep
    from vicregl_cli.transfer import tv_detection

    if dataset not in DATASET_PROTOCOL:
        raise UserError(f"unknown detection dataset {dataset!r}; choose one of {sorted(DATASET_PROTOCOL)}")
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
    if backbone is not None and get_spec(backbone).family != "resnet":
        raise UserError(f"backbone {backbone!r} is not a ResNet; the Faster R-CNN C4 protocol needs one")
    class_names = _check_data_root(dataset, Path(data_root))
    if engine is None:
        engine = "detectron2" if detectron2_importable() or export_only else "torchvision"
        if engine == "torchvision":
            print("detect: detectron2 is not installed; running the embedded torchvision engine", flush=True)
    if engine not in ("detectron2", "torchvision"):
        raise UserError(f"--engine {engine!r}: choose detectron2 or torchvision")
    out = Path(out)
    if export_only and len(lrs) > 1:
        raise UserError("--export-only writes one config: give at most one --lr")
    export_here = functools.partial(
        export,
        backbone,
        weights,
        out,
        dataset=dataset,
        data_root=Path(data_root),
        class_names=class_names,
        batch_size=settings.batch_size,
        iters=iters,
    )
    if export_only:
        return export_here(base_lr=lrs[0] if lrs else None)
    grid = lrs or [0.02 * settings.batch_size / 16]
    if iters is not None:
        settings = replace(settings, iters=iters)
    if engine == "torchvision":
        points = [
            SweepPoint(
                point_name("", lr=float(lr)),
                {
                    "backbone": backbone,
                    "weights": str(weights) if weights else None,
                    "dataset": dataset,
                    "data_root": str(Path(data_root).resolve()),
                    "settings": asdict(replace(settings, base_lr=lr)),
                },
            )
            for lr in grid
        ]
        return run_sweep(out, points, tv_detection.run_point, metric="AP", title="detect (torchvision C4)")
    if not detectron2_importable():
        raise UserError(
            "--engine detectron2: detectron2 is not installed (use --export-only here and "
            "train on the cluster, or --engine torchvision)"
        )
    exported = export_here()
    points = [
        SweepPoint(
            point_name("", lr=float(lr)),
            {
                "backbone": backbone or _stored_name(weights),
                "weights": str(weights) if weights else None,
                "dataset": dataset,
                "data_root": str(Path(data_root).resolve()),
                "pkl": str(exported.weights.resolve()),
                "class_names": class_names,
                "batch_size": settings.batch_size,
                "lr": float(lr),
                "iters": iters,
                "num_gpus": num_gpus,
            },
        )
        for lr in grid
    ]
    return run_sweep(out, points, detectron2_run_point, metric="AP", title="detect (detectron2)")


def _stored_name(weights: Path | None) -> str:
    from vicregl_cli.backbones import read_backbone_state

    name = read_backbone_state(weights)[0] if weights is not None else None
    if name is None:
        raise UserError("pass --backbone NAME (the weights file stores no backbone name)")
    return name


def _check_data_root(dataset: str, data_root: Path) -> list[str] | None:
    """Fail early on a data root of the wrong layout; return the VOC class names (None for COCO)."""
    from vicregl_cli.data.readers import VOC_CLASSES, voc_class_names
    from vicregl_cli.transfer.tv_detection import check_voc_root

    if dataset == "voc":
        return voc_class_names(check_voc_root(data_root))
    if dataset == "voc0712":
        for year in ("VOC2007", "VOC2012"):
            check_voc_root(data_root / year)
        return list(VOC_CLASSES)
    if not (data_root / "annotations").is_dir():
        raise UserError(f"{data_root} is not a COCO root: it lacks annotations/ (and train2017/, val2017/)")
    return None
