"""detectron2 launcher for the exported configs: `python -m vicregl_cli.transfer.detectron2_train --config C
--num-gpus 8 [KEY VALUE ...]`.

It registers what the benchmark configs name and detectron2 does not ship (the `Res5ROIHeadsExtraNorm` ROI
head: res5 followed by one more norm layer, and the `vicregl_*` VOC / COCO datasets read from the config's
`VICREGL.DATA_ROOT`), then runs detectron2's DefaultTrainer under detectron2's `launch`. This is the only
module that imports detectron2, and only inside functions, so `--help` and argument errors work without it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from vicregl_cli.data.readers import VOC_CLASSES, parse_voc_xml, read_split, voc_class_names
from vicregl_cli.errors import UserError
from vicregl_cli.transfer.coco_subset import SUBSET_FRACTION, SUBSET_SEED, coco_subset_ids
from vicregl_cli.transfer.detectron2_config import EXTRA_NORM_HEAD

DETECTRON2_MISSING = (
    "detectron2 is not installed in this environment; install it on the cluster (see docs/detect.md, "
    "https://detectron2.readthedocs.io/en/latest/tutorials/install.html) or run "
    "`vicregl detect --engine torchvision`"
)
VOC_SPLITS = {
    "vicregl_voc_2007_trainval": ("VOC2007", "trainval"),
    "vicregl_voc_2012_trainval": ("VOC2012", "trainval"),
    "vicregl_voc_2007_test": ("VOC2007", "test"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """detectron2's launcher options (as `default_argument_parser`), with `--config` naming the YAML file."""
    port = 2**15 + 2**14 + hash(os.getuid()) % 2**14
    parser = argparse.ArgumentParser(
        prog="python -m vicregl_cli.transfer.detectron2_train",
        description="Train and evaluate an exported vicregl detectron2 config (Faster / Mask R-CNN).",
    )
    parser.add_argument(
        "--config", "--config-file", dest="config_file", required=True, help="YAML written by export"
    )
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in OUTPUT_DIR")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS without training")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default=f"tcp://127.0.0.1:{port}")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=None, help="config overrides: KEY VALUE pairs"
    )
    args = parser.parse_args(argv)
    if not Path(args.config_file).is_file():
        parser.error(f"--config {args.config_file}: no such file (`vicregl detect --export-only` writes it)")
    if args.opts and len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs; got {args.opts}")
    if args.num_gpus < 1:
        parser.error("--num-gpus must be at least 1")
    return args


def read_dataset_section(config_path: str, opts: list[str] | None = None) -> dict:
    """The `VICREGL` section of a config (which datasets to register, where their files are), with the
    command line's `VICREGL.KEY VALUE` overrides applied."""
    with open(config_path) as handle:
        config = yaml.safe_load(handle) or {}
    section = config.get("VICREGL")
    overrides = list(opts or [])
    for key, value in zip(overrides[::2], overrides[1::2], strict=True):
        if key.startswith("VICREGL.") and isinstance(section, dict):
            section[key.split(".", 1)[1]] = yaml.safe_load(value)
    if not isinstance(section, dict) or "DATASET" not in section or "DATA_ROOT" not in section:
        raise UserError(
            f"{config_path} has no VICREGL.DATASET / VICREGL.DATA_ROOT; write it with `vicregl detect`"
        )
    return section


def require_detectron2() -> None:
    """Import detectron2 or stop with a message that says how to get it."""
    try:
        import detectron2  # noqa: F401
    except ImportError as error:
        raise UserError(DETECTRON2_MISSING) from error


def voc_dicts(voc_root: str, split: str, class_names: list[str]) -> list[dict]:
    """detectron2 dataset dicts of a VOC-layout folder (image file named by the XML; difficult objects kept,
    as detectron2's `load_voc_instances` keeps them for training; its VOC evaluator ignores them)."""
    from detectron2.structures import BoxMode  # detectron2: installed on the cluster only

    root = Path(voc_root)
    records = []
    for image_id in read_split(root, "Main", split):
        annotation = parse_voc_xml(root / "Annotations" / f"{image_id}.xml", class_names)
        records.append(
            {
                "file_name": str(root / "JPEGImages" / annotation.filename),
                "image_id": image_id,
                "height": annotation.height,
                "width": annotation.width,
                "annotations": [
                    {
                        "category_id": int(label),
                        "bbox": [float(v) for v in box],
                        "bbox_mode": BoxMode.XYXY_ABS,
                    }
                    for box, label in zip(annotation.boxes, annotation.labels, strict=True)
                ],
            }
        )
    return records


def _register_voc(name: str, voc_root: str, split: str, class_names: list[str]) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        return
    DatasetCatalog.register(name, lambda: voc_dicts(voc_root, split, class_names))
    # year 2007 selects the VOC07 11-point AP, the metric of the VOC 2007 test set the benchmark reports.
    MetadataCatalog.get(name).set(thing_classes=list(class_names), dirname=voc_root, year=2007, split=split)


def coco_subset(records: list[dict], fraction: float, seed: int) -> list[dict]:
    """The dataset dicts of `coco_subset_ids` (the rule the torchvision engine uses too), by image id."""
    keep = set(coco_subset_ids((record["image_id"] for record in records), fraction, seed))
    return sorted((record for record in records if record["image_id"] in keep), key=lambda r: r["image_id"])


def _register_coco(section: dict) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json, register_coco_instances

    root = Path(section["DATA_ROOT"])
    for split in ("train2017", "val2017"):
        json_file = root / "annotations" / f"instances_{split}.json"
        if not json_file.is_file():
            raise UserError(
                f"{json_file} not found; DATA_ROOT must hold annotations/ and train2017/ val2017/"
            )
        register_coco_instances(f"vicregl_coco_2017_{split[:-4]}", {}, str(json_file), str(root / split))
    name = "vicregl_coco_2017_train_10pct"
    if name not in DatasetCatalog.list():
        json_file, image_root = str(root / "annotations/instances_train2017.json"), str(root / "train2017")
        fraction = float(section.get("SUBSET_FRACTION", SUBSET_FRACTION))
        seed = int(section.get("SUBSET_SEED", SUBSET_SEED))
        DatasetCatalog.register(
            name, lambda: coco_subset(load_coco_json(json_file, image_root, name), fraction, seed)
        )
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def register_datasets(section: dict) -> None:
    """Register the `vicregl_*` datasets a config names (idempotent: each spawned worker calls it again)."""
    dataset, root = section["DATASET"], section["DATA_ROOT"]
    if dataset == "voc":
        class_names = list(section.get("CLASS_NAMES") or voc_class_names(Path(root)))
        for split in ("train", "val"):
            _register_voc(f"vicregl_voc_{split}", root, split, class_names)
    elif dataset == "voc0712":
        for name, (year_folder, split) in VOC_SPLITS.items():
            _register_voc(name, str(Path(root) / year_folder), split, list(VOC_CLASSES))
    elif dataset in ("coco", "coco-10pct"):
        _register_coco(section)
    else:
        raise UserError(f"VICREGL.DATASET {dataset!r} is not one of voc, voc0712, coco, coco-10pct")


def register_extra_norm_head() -> None:
    """Register `Res5ROIHeadsExtraNorm`: detectron2's Res5ROIHeads with a norm layer (VICREGL.EXTRA_NORM, else
    RESNETS.NORM) after res5, as in the MoCo / DenseCL detection benchmark; VICREGL.FREEZE_RES5 (Linear Det.)
    freezes res5's blocks first (`CNNBlockBase.freeze`: no gradient, FrozenBN)."""
    from detectron2.layers import get_norm  # detectron2: installed on the cluster only
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if EXTRA_NORM_HEAD in ROI_HEADS_REGISTRY:
        return

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """Res5ROIHeads (res5 frozen for Linear Det.) + norm(res5 output channels) appended to res5."""

        def __init__(self, cfg, input_shape):
            super().__init__(cfg, input_shape)
            if cfg.VICREGL.FREEZE_RES5:
                for block in self.res5:
                    block.freeze()
            norm = cfg.VICREGL.EXTRA_NORM or cfg.MODEL.RESNETS.NORM
            self.res5.add_module("norm", get_norm(norm, self.res5[-1].out_channels))

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


def build_cfg(args: argparse.Namespace):
    """detectron2's default config + the VICREGL section, merged with the file and the overrides."""
    from detectron2.config import CfgNode, get_cfg
    from detectron2.engine import default_setup

    cfg = get_cfg()
    cfg.VICREGL = CfgNode()
    cfg.VICREGL.DATASET = ""
    cfg.VICREGL.DATA_ROOT = ""
    cfg.VICREGL.CLASS_NAMES = []
    cfg.VICREGL.SUBSET_FRACTION = 1.0
    cfg.VICREGL.SUBSET_SEED = 0
    cfg.VICREGL.FREEZE_RES5 = False
    cfg.VICREGL.EXTRA_NORM = ""
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def make_trainer_class():
    """DefaultTrainer whose evaluator is VOC's (11-point AP over IoU 0.5:0.95) or COCO's, by dataset."""
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if "voc" in dataset_name:
                return PascalVOCDetectionEvaluator(dataset_name)
            folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
            return COCOEvaluator(dataset_name, output_dir=folder)

    return Trainer


def main(args: argparse.Namespace):
    """One process (per GPU): register, build the config, then train (or evaluate) with DefaultTrainer."""
    from detectron2.checkpoint import DetectionCheckpointer

    register_extra_norm_head()
    register_datasets(read_dataset_section(args.config_file, args.opts))
    cfg = build_cfg(args)
    trainer_class = make_trainer_class()
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return trainer_class.test(cfg, model)
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv: list[str] | None = None) -> None:
    """Parse, check the config and detectron2 before any process starts, then `launch` one process per GPU."""
    args = parse_args(argv)
    read_dataset_section(args.config_file, args.opts)
    require_detectron2()
    from detectron2.engine import launch

    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    try:
        run()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
