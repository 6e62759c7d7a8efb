"""Segmentation plans and mmseg configs: checks the data root, classes, crop and weights before any training,
and writes one self-contained `config.py` + `backbone.pth` (keys prefixed `backbone.`) per learning rate."""

from __future__ import annotations

import os
import pprint
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vicregl_cli.backbones import build_backbone, get_spec, load_backbone, read_backbone_state
from vicregl_cli.errors import UserError

TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "segment"
DATASET_TEMPLATES = {
    "voc": "voc.py",
    "voc-aug": "voc_aug.py",
    "cityscapes": "cityscapes.py",
    "ade20k": "ade20k.py",
}
OPTIMIZER_TEMPLATES = {"resnet": "resnet_sgd.py", "convnext": "convnext_adamw.py"}
PROTOCOLS = ("linear", "fcn")
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
SAMPLED_FILES = 100  # masks read per split for the class-count check; images probed for the crop size
WEIGHTS_FILE = "backbone.pth"
CONFIG_FILE = "config.py"
WEIGHTS_IN_CONFIG = "{{ fileDirname }}/" + WEIGHTS_FILE  # mmengine substitutes the config's folder
MODELS_MODULE = "vicregl_cli.transfer.mmseg_models"
RANDOM_INIT_SEED = 0


@dataclass
class SegmentSettings:
    """What the user asked for (`vicregl segment` options); None means the template's value."""

    dataset: str
    data_root: Path
    protocol: str = "linear"
    frozen: bool = True
    backbone: str | None = None  # None: the name stored in the weights file
    weights: Path | None = None  # None: random init
    iters: int | None = None
    batch_size: int | None = None  # total over processes
    crop_size: int | None = None
    processes: int = 1  # processes (GPUs) the config is written for; > 1 uses SyncBN
    workers: int = 4
    seed: int = 0
    cfg_options: list[str] = field(default_factory=list)


@dataclass
class SegmentPlan:
    """Everything checked and resolved before training: picklable, so a SLURM job can run a sweep point."""

    settings: SegmentSettings
    backbone: str
    family: str
    stage_widths: tuple[int, int, int, int]
    backbone_options: dict
    class_names: list[str]
    img_suffix: str
    crop_size: int
    resize_scale: tuple[int, int]
    iters: int
    batch_size: int
    dataset_template: dict
    optimizer_template: dict
    default_lrs: list[float]
    notes: list[str] = field(default_factory=list)


def read_template(path: Path) -> dict:
    """The variables of a template config (plain Python assignments)."""
    from mmengine.config import Config

    return Config.fromfile(str(path)).to_dict()


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
        with Image.open(mask_path) as mask:
            if mask.mode not in ("P", "L"):
                raise UserError(
                    f"mask {mask_path} has mode {mask.mode}; expected a palette or grey PNG of indices"
                )
            values = np.unique(np.asarray(mask))
        bad = [int(v) for v in values if v > highest and v != 255]
        if bad:
            raise UserError(
                f"mask {mask_path} has labels {bad} but {source} defines {num_classes} classes "
                f"(labels 0..{highest}, 255 = ignore): the class list does not match the masks"
            )


def _class_names(dataset: str, data_root: Path, template: dict) -> tuple[list[str], str]:
    if template["classes_from"] == "voc_root":
        from vicregl_cli.data.readers import voc_class_names

        listing = data_root / "classes.txt"
        source = f"{listing} (+ background)" if listing.is_file() else "the 20 VOC classes (+ background)"
        return ["background", *voc_class_names(data_root)], source
    from mmseg.registry import DATASETS

    import vicregl_cli.transfer.mmseg_models  # noqa: F401 - the mmcv.ops stand-in, before mmseg's modules load

    classes = list(DATASETS.get(template["dataset_type"]).METAINFO["classes"])
    if len(classes) != template["num_classes"]:
        raise UserError(
            f"mmseg's {template['dataset_type']} has {len(classes)} classes, the template says "
            f"{template['num_classes']}"
        )
    return classes, f"mmseg's {template['dataset_type']}"


def _fit_crop(pairs: list[tuple[Path, Path]], template_crop: int, notes: list[str]) -> int:
    """The template crop, unless the images are so small (short side under half the crop, e.g. the 96-px
    synthetic set) that upsampling them 2x and more would only slow the run: then the crop shrinks to them."""
    short_sides = []
    for image_path, _ in pairs[:SAMPLED_FILES]:
        with Image.open(image_path) as image:
            short_sides.append(min(image.size))
    short = int(statistics.median(short_sides))
    if short * 2 >= template_crop:
        return template_crop
    crop = max(32, short // 32 * 32)
    notes.append(
        f"images are about {short} px; crop {template_crop} shrunk to {crop} (set it with --crop-size)"
    )
    return crop


def _backbone_choice(settings: SegmentSettings) -> tuple[str, dict]:
    """(backbone name, build options): from --backbone and the weights file (its stored name, layer scale)."""
    if settings.weights is None:
        if settings.backbone is None:
            raise UserError("random init needs a backbone name: pass --backbone NAME")
        return settings.backbone, {}
    stored, state = read_backbone_state(settings.weights)
    name = settings.backbone or stored
    if name is None:
        raise UserError(f"{settings.weights} does not store a backbone name: pass --backbone NAME")
    options = {}
    if get_spec(name).family == "convnext" and any(key.endswith(".gamma") for key in state):
        options["layer_scale_init_value"] = 1e-6
    return name, options


def plan_segmentation(settings: SegmentSettings) -> SegmentPlan:
    """Check every input (options, data layout, classes vs masks, weights) and resolve the templates."""
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
    name, options = _backbone_choice(settings)
    spec = get_spec(name)
    if settings.protocol == "fcn" and spec.family != "resnet":
        raise UserError(
            f"the fcn protocol runs mmseg's FCNHead on a dilated ResNet; {name} is a {spec.family}"
        )
    if settings.weights is not None:
        load_backbone(name, settings.weights, **options)  # strict: missing / unexpected keys name themselves
    data_root = Path(settings.data_root).expanduser()
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} does not exist")
    template = read_template(TEMPLATES / DATASET_TEMPLATES[settings.dataset])
    optimizer = read_template(TEMPLATES / OPTIMIZER_TEMPLATES[spec.family])
    img_suffix = _image_suffix(data_root, template)
    seg_suffix = template["seg_map_suffix"]
    train_pairs = [
        pair
        for split in template["train_splits"]
        for pair in _split_files(data_root, split, img_suffix, seg_suffix)
    ]
    val_pairs = _split_files(data_root, template["val_split"], img_suffix, seg_suffix)
    _check_files(train_pairs[:SAMPLED_FILES] + val_pairs[:SAMPLED_FILES])
    class_names, source = _class_names(settings.dataset, data_root, template)
    for pairs in (train_pairs, val_pairs):
        _check_labels(pairs, len(class_names), template["reduce_zero_label"], source)
    notes: list[str] = []
    crop = settings.crop_size or _fit_crop(train_pairs, template["crop_size"], notes)
    scale = tuple(round(side * crop / template["crop_size"]) for side in template["resize_scale"])
    batch_size = settings.batch_size or template["batch_size"]
    if batch_size % settings.processes:
        raise UserError(
            f"--batch-size {batch_size} (total) does not split over {settings.processes} processes"
        )
    regime = "frozen" if settings.frozen else "finetune"
    return SegmentPlan(
        settings=settings,
        backbone=name,
        family=spec.family,
        stage_widths=spec.stage_widths,
        backbone_options=options,
        class_names=class_names,
        img_suffix=img_suffix,
        crop_size=crop,
        resize_scale=scale,
        iters=settings.iters or template["iters"],
        batch_size=batch_size,
        dataset_template=template,
        optimizer_template=optimizer,
        default_lrs=list(optimizer["lr_grid"][regime]),
        notes=notes,
    )


def _norm_cfg(plan: SegmentPlan) -> dict:
    return dict(type="SyncBN" if plan.settings.processes > 1 else "BN", requires_grad=True)


def _model(plan: SegmentPlan) -> dict:
    widths = list(plan.stage_widths)
    num_classes = len(plan.class_names)
    norm = _norm_cfg(plan)
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
    is_resnet = plan.family == "resnet"
    backbone = dict(
        type="VICRegLBackbone",
        name=plan.backbone,
        output_stride=8 if is_resnet else 32,
        frozen=plan.settings.frozen,
        options=plan.backbone_options,
        init_cfg=dict(type="Pretrained", checkpoint=WEIGHTS_IN_CONFIG, prefix="backbone."),
    )
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=(plan.crop_size, plan.crop_size),
        ),
        backbone=backbone,
    )
    if plan.settings.protocol == "fcn":
        model["decode_head"] = dict(
            type="FCNHead",
            in_channels=widths[3],
            in_index=3,
            channels=512,
            num_convs=2,
            concat_input=True,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=loss,
        )
        model["auxiliary_head"] = dict(
            type="FCNHead",
            in_channels=widths[2],
            in_index=2,
            channels=256,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(loss, loss_weight=0.4),
        )
    elif is_resnet:
        model["decode_head"] = dict(
            type="LinearSegHead",
            in_channels=widths[3],
            in_index=3,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=loss,
        )
    else:
        model["decode_head"] = dict(
            type="LinearSegHead",
            in_channels=widths,
            in_index=[0, 1, 2, 3],
            input_transform="resize_concat",
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=loss,
        )
    model["train_cfg"] = dict()
    model["test_cfg"] = dict(mode="whole")
    return model


def _pipelines(plan: SegmentPlan) -> tuple[list[dict], list[dict]]:
    crop = (plan.crop_size, plan.crop_size)
    train = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="RandomResize", scale=plan.resize_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    test = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=plan.resize_scale, keep_ratio=True),
        dict(type="LoadAnnotations"),
        dict(type="PackSegInputs"),
    ]
    return train, test


def _dataset(plan: SegmentPlan, split: dict, pipeline: list[dict]) -> dict:
    template = plan.dataset_template
    dataset = dict(
        type=template["dataset_type"],
        data_root=str(Path(plan.settings.data_root).expanduser().resolve()),
        data_prefix=dict(img_path=split["img_path"], seg_map_path=split["seg_map_path"]),
        ann_file=split["ann_file"],
        img_suffix=plan.img_suffix,
        seg_map_suffix=template["seg_map_suffix"],
        reduce_zero_label=template["reduce_zero_label"],
        pipeline=pipeline,
    )
    if template["classes_from"] == "voc_root":
        dataset["metainfo"] = dict(classes=tuple(plan.class_names))
    return dataset


def _schedule(plan: SegmentPlan, lr: float) -> dict:
    optimizer_template = plan.optimizer_template
    iters = plan.iters
    optim_wrapper = dict(
        type="OptimWrapper", optimizer=dict(optimizer_template["optimizer"], lr=lr), clip_grad=None
    )
    if optimizer_template["paramwise_cfg"]:
        optim_wrapper["paramwise_cfg"] = optimizer_template["paramwise_cfg"]
    schedulers = []
    begin = 0
    warmup = optimizer_template["warmup"]
    if warmup:
        begin = min(warmup["iters"], iters // 10)
        if begin:
            schedulers.append(
                dict(
                    type=warmup["type"],
                    start_factor=warmup["start_factor"],
                    by_epoch=False,
                    begin=0,
                    end=begin,
                )
            )
    poly = optimizer_template["poly"]
    schedulers.append(
        dict(
            type=poly["type"],
            power=poly["power"],
            eta_min=poly["eta_min"],
            by_epoch=False,
            begin=begin,
            end=iters,
        )
    )
    template = plan.dataset_template
    return dict(
        optim_wrapper=optim_wrapper,
        param_scheduler=schedulers,
        train_cfg=dict(
            type="IterBasedTrainLoop", max_iters=iters, val_interval=min(template["val_interval"], iters)
        ),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(
                type="CheckpointHook",
                by_epoch=False,
                interval=min(template["checkpoint_interval"], iters),
                max_keep_ckpts=2,
            ),
            sampler_seed=dict(type="DistSamplerSeedHook"),
            visualization=dict(type="SegVisualizationHook"),
        ),
    )


def build_config(plan: SegmentPlan, lr: float) -> dict:
    """The full mmseg config (a dict of top-level variables) of one sweep point."""
    settings = plan.settings
    train_pipeline, test_pipeline = _pipelines(plan)
    train_sets = [_dataset(plan, split, train_pipeline) for split in plan.dataset_template["train_splits"]]
    train_set = train_sets[0] if len(train_sets) == 1 else dict(type="ConcatDataset", datasets=train_sets)
    workers = settings.workers
    val_dataloader = dict(
        batch_size=1,
        num_workers=workers,
        persistent_workers=workers > 0,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=_dataset(plan, plan.dataset_template["val_split"], test_pipeline),
    )
    evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
    config = dict(
        custom_imports=dict(imports=[MODELS_MODULE], allow_failed_imports=False),
        default_scope="mmseg",
        env_cfg=dict(
            cudnn_benchmark=True,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl" if settings.processes > 1 else "gloo"),
        ),
        randomness=dict(seed=settings.seed),
        model=_model(plan),
        train_dataloader=dict(
            batch_size=plan.batch_size // settings.processes,
            num_workers=workers,
            persistent_workers=workers > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            dataset=train_set,
        ),
        val_dataloader=val_dataloader,
        test_dataloader=val_dataloader,
        val_evaluator=evaluator,
        test_evaluator=evaluator,
        **_schedule(plan, lr),
        custom_hooks=[dict(type="BackboneWeightsCheckHook", checkpoint=WEIGHTS_IN_CONFIG)],
        vis_backends=[dict(type="LocalVisBackend")],
        visualizer=dict(type="SegLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")]),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        load_from=None,
        resume=False,
    )
    if settings.processes > 1 and not settings.frozen:
        config["sync_bn"] = "torch"
    return _apply_cfg_options(config, settings.cfg_options)


def _apply_cfg_options(config: dict, options: list[str]) -> dict:
    """mmengine's `--cfg-options key=value` semantics (dotted keys; values parsed as numbers, lists, ...)."""
    if not options:
        return config
    from mmengine.config import Config, DictAction

    parsed = {}
    for option in options:
        key, separator, value = option.partition("=")
        if not separator or not key:
            raise UserError(f"--cfg-options takes key=value pairs, got {option!r}")
        parsed[key] = DictAction._parse_iterable(value)
    merged = Config(config)
    try:
        merged.merge_from_dict(parsed)
    except (KeyError, TypeError) as error:
        raise UserError(f"--cfg-options {options}: {error}") from None
    return merged.to_dict()


def config_text(config: dict, header: str) -> str:
    """The config as a Python file mmengine reads (`{{ fileDirname }}` resolves to the file's folder)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in config.items():
        lines.append(f"{key} = {pprint.pformat(value, width=110, sort_dicts=False)}")
    return "\n".join(lines) + "\n"


def backbone_state(plan: SegmentPlan) -> dict[str, torch.Tensor]:
    """The backbone weights to export: the user's file (loaded strictly) or a seeded random init."""
    settings = plan.settings
    if settings.weights is None:
        torch.manual_seed(RANDOM_INIT_SEED)
        model = build_backbone(plan.backbone, **plan.backbone_options)
    else:
        model = load_backbone(plan.backbone, settings.weights, **plan.backbone_options)
    return {f"backbone.{key}": value.detach().cpu() for key, value in model.state_dict().items()}


def write_weights(path: Path, state: dict[str, torch.Tensor], reuse: Path | None) -> None:
    """A plain `backbone.`-prefixed state dict (what mmengine's Pretrained init and `load_from` read); a hard
    link to `reuse` (the sweep's first copy) when the file system allows it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(
        f".{path.name}.{os.getpid()}.tmp"
    )  # one per process: torchrun ranks write it too
    if reuse is not None and reuse.is_file():
        try:
            os.link(reuse, temporary)
        except OSError:
            shutil.copyfile(reuse, temporary)
    else:
        torch.save(state, temporary)
    os.replace(temporary, path)
