"""Segmentation plans: what the user asked for, checked (options, device, data root, classes vs masks, crop,
learning rates) against the resolved weights and the packaged templates before any training starts."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vicregl_cli.backbones import WeightsRef, get_spec
from vicregl_cli.data.image_sizes import far_smaller, median_short_side
from vicregl_cli.data.readers import read_mask, voc_class_names
from vicregl_cli.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

TEMPLATES = files("vicregl_cli") / "configs" / "segment"
DATASET_TEMPLATES = {
    "voc": "voc.py",
    "voc-aug": "voc_aug.py",
    "cityscapes": "cityscapes.py",
    "ade20k": "ade20k.py",
}
FAMILY_TEMPLATES = {"resnet": "resnet_sgd.py", "convnext": "convnext_adamw.py"}  # head, inference, optimiser
PROTOCOLS = ("linear", "fcn")
SAMPLED_FILES = 100  # masks read per split for the class-count check
AUTO_DEVICES = (None, "auto")


@dataclass(frozen=True)
class SegmentSettings:
    """What the user asked for (`vicregl segment` options) besides the weights; None means the template's
    value. The backbone, its build options and tensors come from the WeightsRef."""

    dataset: str
    data_root: Path
    protocol: str = "linear"
    frozen: bool = True
    lrs: tuple[float, ...] | None = None  # None (or empty): the template's grid
    iters: int | None = None
    batch_size: int | None = None  # total over processes
    crop_size: int | None = None  # a square crop side; None: the template crop (shrunk for tiny images)
    processes: int = 1  # processes (GPUs) the config is written for; > 1 uses SyncBN
    workers: int = 4
    seed: int = 0
    device: str | None = None  # None / "auto": mmengine's Runner picks (CUDA when visible)
    cfg_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SegmentPlan:
    """Everything checked and resolved before training, shared by every learning rate: picklable, so a SLURM
    job can run a sweep point."""

    settings: SegmentSettings
    data_root: Path  # resolved
    class_names: tuple[str, ...]
    img_suffix: str
    crop_size: tuple[int, int]  # (height, width)
    resize_scale: tuple[int, int]
    iters: int
    batch_size: int
    lrs: tuple[float, ...]
    train_images: int
    val_images: int
    dataset_template: dict
    family_template: dict  # the backbone family's linear-head dropout, inference mode and optimiser
    notes: tuple[str, ...] = ()


def read_template(path: Traversable) -> dict:
    """The variables of a template config (plain Python assignments)."""
    from mmengine.config import Config  # the optional `seg` extra: only loaded when a segment run is planned

    with as_file(path) as real_path:  # a real file even when the package is installed zipped
        return Config.fromfile(str(real_path)).to_dict()


def _check_choice(value: str, choices, what: str) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _split_ids(data_root: Path, split: dict) -> list[str]:
    listing = data_root / split["ann_file"]
    if not listing.is_file():
        nested = sorted(child for child in data_root.iterdir() if (child / split["ann_file"]).is_file())
        hint = f"; did you mean --data-root {nested[0]}?" if nested else " (layout: see docs/segment.md)"
        raise UserError(f"{data_root} lacks the split file {split['ann_file']}{hint}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"split file {listing} lists no images")
    return ids


def _split_files(data_root: Path, split: dict, img_suffix: str, seg_suffix: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a split: its ann_file ids, or each mask below seg_map_path (Cityscapes, ADE)."""
    for folder in (split["img_path"], split["seg_map_path"]):
        if not (data_root / folder).is_dir():
            raise UserError(f"{data_root} lacks the folder {folder}/ (expected layout: see docs/segment.md)")
    if split["ann_file"]:
        ids = _split_ids(data_root, split)
    else:
        masks = sorted((data_root / split["seg_map_path"]).rglob(f"*{seg_suffix}"))
        if not masks:
            raise UserError(f"{data_root / split['seg_map_path']} holds no *{seg_suffix} masks")
        ids = [str(mask.relative_to(data_root / split["seg_map_path"]))[: -len(seg_suffix)] for mask in masks]
    return [
        (
            data_root / split["img_path"] / f"{i}{img_suffix}",
            data_root / split["seg_map_path"] / f"{i}{seg_suffix}",
        )
        for i in ids
    ]


def _image_suffix(data_root: Path, template: dict) -> str:
    """The template's image suffix, or `.png` when a VOC-style root stores its images as PNG."""
    suffix = template["img_suffix"]
    first = template["train_splits"][0]
    if not first["ann_file"]:
        return suffix
    first_id = _split_ids(data_root, first)[0]
    folder = data_root / first["img_path"]
    if not (folder / f"{first_id}{suffix}").is_file() and (folder / f"{first_id}.png").is_file():
        return ".png"
    return suffix


def _check_files(pairs: list[tuple[Path, Path]]) -> None:
    missing = [str(path) for pair in pairs for path in pair if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} image/mask files listed in the split are missing, e.g. {missing[0]}")


def _check_labels(
    pairs: list[tuple[Path, Path]], num_classes: int, reduce_zero_label: bool, source: str
) -> None:
    """Class-count check on a sample of masks: every label must be a class index (or 255, ignored)."""
    highest = num_classes if reduce_zero_label else num_classes - 1
    for _, mask_path in pairs[:SAMPLED_FILES]:
        values = np.unique(read_mask(mask_path))
        bad = [int(v) for v in values if v > highest and v != 255]
        if bad:
            raise UserError(
                f"mask {mask_path} has labels {bad} but {source} defines {num_classes} classes "
                f"(labels 0..{highest}, 255 = ignore): the class list does not match the masks"
            )


def _class_names(data_root: Path, template: dict) -> tuple[list[str], str]:
    """(class names, where they come from): the VOC root's list, or the mmseg dataset's METAINFO."""
    if template["classes_from"] == "voc_root":
        listing = data_root / "classes.txt"
        source = f"{listing} (+ background)" if listing.is_file() else "the 20 VOC classes (+ background)"
        return ["background", *voc_class_names(data_root)], source
    from mmseg.registry import DATASETS  # the optional `seg` extra: only for the mmseg-defined datasets

    import vicregl_cli.transfer.mmseg_models  # noqa: F401 - the mmcv.ops stand-in, before mmseg's modules load

    classes = list(DATASETS.get(template["dataset_type"]).METAINFO["classes"])
    if len(classes) != template["num_classes"]:
        raise UserError(
            f"mmseg's {template['dataset_type']} has {len(classes)} classes, the template says "
            f"{template['num_classes']}"
        )
    return classes, f"mmseg's {template['dataset_type']}"


def _fit_crop(
    pairs: list[tuple[Path, Path]], template_crop: tuple[int, int], notes: list[str]
) -> tuple[int, int]:
    """The template crop (height, width), unless the images are so small (short side under half the crop's
    short side, e.g. the 96-px synthetic set) that upsampling them 2x and more would only slow the run: then
    the crop's short side shrinks to them (a multiple of 32) and its long side in proportion."""
    short = median_short_side([image_path for image_path, _ in pairs])
    template_short = min(template_crop)
    if not far_smaller(short, template_short):
        return template_crop
    shrunk = max(32, short // 32 * 32)
    crop = (template_crop[0] * shrunk // template_short, template_crop[1] * shrunk // template_short)
    notes.append(
        f"images are about {short} px; crop {_crop_text(template_crop)} shrunk to {_crop_text(crop)} "
        "(set a square crop with --crop-size)"
    )
    return crop


def _crop_text(crop: tuple[int, int]) -> str:
    """`512` for a square crop, `512x1024` (height x width) otherwise."""
    return str(crop[0]) if crop[0] == crop[1] else f"{crop[0]}x{crop[1]}"


def _check_device(device: str | None) -> None:
    """mmengine's Runner picks its device itself: a --device it would not honour is an error, not ignored."""
    if device in AUTO_DEVICES:
        return
    from mmengine.device import get_device  # the optional `seg` extra (already loaded for the templates)

    picked = get_device()
    if device == picked:
        return
    if device == "cpu":
        hint = "hide the GPUs to train on the CPU: CUDA_VISIBLE_DEVICES= vicregl segment ..."
    elif device.startswith("cuda:"):
        hint = "each process uses its local rank's GPU: choose GPUs with CUDA_VISIBLE_DEVICES=N"
    else:
        hint = f"no {device} device is visible here; drop --device (or give auto)"
    raise UserError(
        f"--device {device}: mmengine's Runner trains on {picked} here (it picks the device itself, CUDA "
        f"when visible); {hint}"
    )


def _check_options(settings: SegmentSettings) -> None:
    """Choices and numbers that need neither data nor templates."""
    _check_choice(settings.dataset, DATASET_TEMPLATES, "dataset")
    _check_choice(settings.protocol, PROTOCOLS, "protocol")
    for name, value in (
        ("--iters", settings.iters),
        ("--batch-size", settings.batch_size),
        ("--crop-size", settings.crop_size),
    ):
        if value is not None and value < 1:
            raise UserError(f"{name} must be positive, got {value}")
    if settings.processes < 1 or settings.workers < 0:
        raise UserError("--gpus must be >= 1 and --workers >= 0")
    if any(lr <= 0 for lr in settings.lrs or ()):
        raise UserError(f"learning rates must be positive, got {list(settings.lrs)}")


def dataset_files(
    dataset: str, data_root: Path
) -> tuple[dict, str, list[tuple[Path, Path]], list[tuple[Path, Path]], list[str]]:
    """(template, image suffix, train and val (image, mask) pairs, class names) of a `--dataset` root, with
    the files and labels of a sample checked: the readers `segment` and `dense` share."""
    _check_choice(dataset, DATASET_TEMPLATES, "dataset")
    template = read_template(TEMPLATES / DATASET_TEMPLATES[dataset])
    img_suffix = _image_suffix(data_root, template)
    seg_suffix = template["seg_map_suffix"]
    train_pairs = [
        pair
        for split in template["train_splits"]
        for pair in _split_files(data_root, split, img_suffix, seg_suffix)
    ]
    val_pairs = _split_files(data_root, template["val_split"], img_suffix, seg_suffix)
    _check_files(train_pairs[:SAMPLED_FILES] + val_pairs[:SAMPLED_FILES])
    class_names, source = _class_names(data_root, template)
    for pairs in (train_pairs, val_pairs):
        _check_labels(pairs, len(class_names), template["reduce_zero_label"], source)
    return template, img_suffix, train_pairs, val_pairs, class_names


def check_settings(settings: SegmentSettings, weights: WeightsRef) -> SegmentPlan:
    """Check every input (options, device, data layout, classes vs masks, batch split) against the resolved
    weights and the templates; nothing is trained or written."""
    _check_options(settings)
    family = get_spec(weights.backbone).family
    if settings.protocol == "fcn" and family != "resnet":
        raise UserError(
            f"the fcn protocol runs mmseg's FCNHead on a dilated ResNet; {weights.backbone} is a {family}"
        )
    data_root = Path(settings.data_root).expanduser()
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} does not exist")
    family_template = read_template(TEMPLATES / FAMILY_TEMPLATES[family])
    _check_device(settings.device)
    template, img_suffix, train_pairs, val_pairs, class_names = dataset_files(settings.dataset, data_root)
    notes: list[str] = []
    template_crop = tuple(template["crop_size"])
    if settings.crop_size:
        crop = (settings.crop_size, settings.crop_size)
    else:
        crop = _fit_crop(train_pairs, template_crop, notes)
    scale = tuple(round(side * min(crop) / min(template_crop)) for side in template["resize_scale"])
    batch_size = settings.batch_size or template["batch_size"]
    if batch_size % settings.processes:
        raise UserError(
            f"--batch-size {batch_size} (total) does not split over {settings.processes} processes"
        )
    regime = "frozen" if settings.frozen else "finetune"
    return SegmentPlan(
        settings=settings,
        data_root=data_root.resolve(),
        class_names=tuple(class_names),
        img_suffix=img_suffix,
        crop_size=crop,
        resize_scale=scale,
        iters=settings.iters or template["iters"],
        batch_size=batch_size,
        lrs=tuple(float(lr) for lr in settings.lrs or family_template["lr_grid"][regime]),
        train_images=len(train_pairs),
        val_images=len(val_pairs),
        dataset_template=template,
        family_template=family_template,
        notes=tuple(notes),
    )
