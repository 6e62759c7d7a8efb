"""The detectron2 benchmark configs (no detectron2 needed): self-contained YAML files (no `_BASE_`) that
`detectron2_train.py` reads, their `VICREGL` section naming the dataset layout the launcher registers (and,
for Linear Det., the res5 head's freeze), and the template configs kept in the package's `configs/detect/`."""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path

import yaml

from vicregl_cli.data.imagenet import IMAGENET_MEAN_255, IMAGENET_STD_255
from vicregl_cli.errors import UserError
from vicregl_cli.transfer.coco_subset import SUBSET_FRACTION, SUBSET_SEED

EXTRA_NORM_HEAD = "Res5ROIHeadsExtraNorm"
C4_DEPTHS = {"resnet50": 50, "resnet101": 101, "resnet152": 152, "resnet50x2": 50, "resnet50x4": 50}
VOC_MIN_SIZES = tuple(range(480, 801, 32))
COCO_MIN_SIZES = tuple(range(640, 801, 32))
PROTOCOLS = ("voc_R_50_C4_24k", "coco_R_50_C4_1x", "coco_R_50_FPN_1x", "coco_10pct_R_50_FPN_1x")
DATASET_PROTOCOL = {
    "voc": "voc_R_50_C4_24k",
    "voc0712": "voc_R_50_C4_24k",
    "coco": "coco_R_50_FPN_1x",
    "coco-10pct": "coco_10pct_R_50_FPN_1x",
}
VOC_SCHEDULE = (24000, (18000, 22000), 100)  # iterations, lr steps, warm-up iterations
COCO_SCHEDULE = (90000, (60000, 80000), 1000)


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


def solver(
    protocol: str, batch_size: int = 16, base_lr: float | None = None, iters: int | None = None
) -> dict:
    """The `SOLVER` section: lr 0.02 x batch/16 unless given; `iters` rescales the protocol's schedule (steps
    keep their fractions, warm-up is capped at 10 % of it)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown detectron2 protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    full_iters, full_steps, full_warmup = VOC_SCHEDULE if protocol.startswith("voc") else COCO_SCHEDULE
    total = full_iters if iters is None else iters
    return {
        "IMS_PER_BATCH": batch_size,
        "BASE_LR": 0.02 * batch_size / 16 if base_lr is None else base_lr,
        "STEPS": [round(step * total / full_iters) for step in full_steps],
        "MAX_ITER": total,
        "WARMUP_ITERS": full_warmup if iters is None else min(full_warmup, max(total // 10, 1)),
        "CHECKPOINT_PERIOD": 5000,
    }


def _datasets(dataset: str) -> dict:
    """`DATASETS`: the `vicregl_*` names the launcher registers for `dataset`."""
    if dataset == "voc":
        return {"TRAIN": ["vicregl_voc_train"], "TEST": ["vicregl_voc_val"]}
    if dataset == "voc0712":
        return {
            "TRAIN": ["vicregl_voc_2007_trainval", "vicregl_voc_2012_trainval"],
            "TEST": ["vicregl_voc_2007_test"],
        }
    train = "vicregl_coco_2017_train_10pct" if dataset == "coco-10pct" else "vicregl_coco_2017_train"
    return {"TRAIN": [train], "TEST": ["vicregl_coco_2017_val"]}


def _fpn_model(resnets: dict) -> dict:
    """The `MODEL` entries of Mask R-CNN R50-FPN 1x (SyncBN in FPN and heads, 4conv1fc box head)."""
    resnets["OUT_FEATURES"] = ["res2", "res3", "res4", "res5"]
    return {
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0},
        "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "NORM": "SyncBN"},
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
        "RPN": {
            "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
            "PRE_NMS_TOPK_TRAIN": 2000,
            "PRE_NMS_TOPK_TEST": 1000,
            "POST_NMS_TOPK_TRAIN": 1000,
            "POST_NMS_TOPK_TEST": 1000,
        },
        "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"], "NUM_CLASSES": 80},
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
    """The benchmark config of `protocol` as a dict (MoCo / DenseCL lineage, RGB + torchvision statistics);
    the schedule is `solver(protocol, batch_size, base_lr, iters)`."""
    schedule = solver(protocol, batch_size, base_lr, iters)
    is_voc = protocol.startswith("voc")
    resnets = {"NORM": "SyncBN", "STRIDE_IN_1X1": False, **resnet_geometry(backbone_name)}
    model: dict = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": weights,
        "MASK_ON": not is_voc,
        "PIXEL_MEAN": list(IMAGENET_MEAN_255),
        "PIXEL_STD": list(IMAGENET_STD_255),
        "RESNETS": resnets,
    }
    if "FPN" in protocol:
        model.update(_fpn_model(resnets))
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
        "DATASETS": _datasets(dataset),
        "SOLVER": schedule,
        "TEST": {"PRECISE_BN": {"ENABLED": True, "NUM_ITER": 200}, "EVAL_PERIOD": 0},
        "OUTPUT_DIR": output_dir,
        "VICREGL": {
            "DATASET": dataset,
            "DATA_ROOT": data_root,
            "CLASS_NAMES": list(class_names) if class_names is not None else [],
            "SUBSET_FRACTION": SUBSET_FRACTION if dataset == "coco-10pct" else 1.0,
            "SUBSET_SEED": SUBSET_SEED,
        },
    }


def linear_det_config(config: dict) -> dict:
    """VICRegL Table 9's Linear Det. from a C4 benchmark config: stem..res4 frozen (`FREEZE_AT 5`, FrozenBN
    with the pretrained statistics), the ROI head's res5 frozen too (`VICREGL.FREEZE_RES5`, which the
    launcher's extra-norm head applies: detectron2 has no key for it); the RPN, the extra norm (kept a
    trained, synchronised BatchNorm via `VICREGL.EXTRA_NORM`) and the box predictor train."""
    if config["MODEL"]["ROI_HEADS"]["NAME"] != EXTRA_NORM_HEAD:
        raise UserError("Linear Det. (--frozen) is defined for the Faster R-CNN C4 benchmark only")
    frozen = copy.deepcopy(config)
    model = frozen["MODEL"]
    frozen["VICREGL"].update({"FREEZE_RES5": True, "EXTRA_NORM": model["RESNETS"]["NORM"]})
    model["BACKBONE"]["FREEZE_AT"] = 5
    model["RESNETS"]["NORM"] = "FrozenBN"
    return frozen


def write_config(path: Path, config: dict) -> Path:
    """Write a config dict as YAML (block style, keys in insertion order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    return path


def template_folder() -> Path:
    """The package's `vicregl_cli/configs/detect/` (installed as package data)."""
    return Path(str(files("vicregl_cli") / "configs" / "detect"))


def template_configs() -> dict[str, dict]:
    """The configs kept in `vicregl_cli/configs/detect/` (weights and data root to fill in)."""
    common = {"data_root": "datasets", "weights": "backbone.pkl"}
    voc = build_config("voc_R_50_C4_24k", dataset="voc0712", **common)
    return {
        "voc0712_R_50_C4_24k.yaml": voc,
        "voc0712_R_50_C4_24k_frozen.yaml": linear_det_config(voc),
        "coco_R_50_C4_1x.yaml": build_config("coco_R_50_C4_1x", dataset="coco", **common),
        "coco_R_50_FPN_1x.yaml": build_config("coco_R_50_FPN_1x", dataset="coco", **common),
        "coco_10pct_R_50_FPN_1x.yaml": build_config("coco_10pct_R_50_FPN_1x", dataset="coco-10pct", **common),
    }
