"""The mmseg config of one sweep point: model, pipelines, datasets and schedule from a checked plan, written
as one self-contained `config.py` that reads the `backbone.`-prefixed `backbone.pth` beside it."""

from __future__ import annotations

import pprint
from collections.abc import Sequence

from vicregl_cli.backbones import WeightsRef, get_spec
from vicregl_cli.data.imagenet import IMAGENET_MEAN_255, IMAGENET_STD_255
from vicregl_cli.errors import UserError
from vicregl_cli.tensorboard import TB_DIR
from vicregl_cli.transfer.segment_plan import SegmentPlan

WEIGHTS_FILE = "backbone.pth"
CONFIG_FILE = "config.py"
WEIGHTS_IN_CONFIG = "{{ fileDirname }}/" + WEIGHTS_FILE  # mmengine substitutes the config's folder
MODELS_MODULE = "vicregl_cli.transfer.mmseg_models"


def _norm_cfg(plan: SegmentPlan) -> dict:
    """The heads' norm layer: SyncBN when the config is written for several processes."""
    return dict(type="SyncBN" if plan.settings.processes > 1 else "BN", requires_grad=True)


def _model(plan: SegmentPlan, weights: WeightsRef) -> dict:
    """EncoderDecoder: our backbone (dilated to stride 8 for ResNets, built with the options the weights
    imply) and the protocol's head(s)."""
    spec = get_spec(weights.backbone)
    widths = list(spec.stage_widths)
    num_classes = len(plan.class_names)
    norm = _norm_cfg(plan)
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
    is_resnet = spec.family == "resnet"
    backbone = dict(
        type="VICRegLBackbone",
        name=weights.backbone,
        output_stride=8 if is_resnet else 32,
        frozen=plan.settings.frozen,
        options=dict(weights.options),
        init_cfg=dict(type="Pretrained", checkpoint=WEIGHTS_IN_CONFIG, prefix="backbone."),
    )
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=IMAGENET_MEAN_255,
            std=IMAGENET_STD_255,
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=plan.crop_size,
        ),
        backbone=backbone,
    )
    common = dict(num_classes=num_classes, norm_cfg=norm, align_corners=False, loss_decode=loss)
    if plan.settings.protocol == "fcn":  # mmseg's fcn_r50-d8: FCNHead on res5, auxiliary FCNHead on res4
        fcn = dict(type="FCNHead", dropout_ratio=0.1, **common)
        model["decode_head"] = dict(
            fcn, in_channels=widths[3], in_index=3, channels=512, num_convs=2, concat_input=True
        )
        model["auxiliary_head"] = dict(
            fcn, in_channels=widths[2], in_index=2, channels=256, num_convs=1, concat_input=False,
            loss_decode=dict(loss, loss_weight=0.4),
        )  # fmt: skip
    else:  # the linear head: the last stage (ResNet) or the four stages resized and concatenated (ConvNeXt)
        dropout = plan.family_template["linear_head_dropout"]
        linear = dict(type="LinearSegHead", dropout_ratio=dropout, **common)
        if is_resnet:
            model["decode_head"] = dict(linear, in_channels=widths[3], channels=widths[3], in_index=3)
        else:
            model["decode_head"] = dict(
                linear, in_channels=widths, channels=sum(widths), in_index=[0, 1, 2, 3],
                input_transform="resize_concat",
            )  # fmt: skip
    model["train_cfg"] = dict()
    model["test_cfg"] = _inference(plan)
    return model


def _inference(plan: SegmentPlan) -> dict:
    """The family's test-time mode; a sliding window is the training crop, its stride in the template's
    window : stride proportion (512 : 341), so a crop shrunk for tiny images scales both."""
    inference = dict(plan.family_template["inference"])
    if inference["mode"] == "slide":
        proportions = zip(plan.crop_size, inference["stride"], inference["crop_size"], strict=True)
        inference["stride"] = tuple(round(side * stride / window) for side, stride, window in proportions)
        inference["crop_size"] = plan.crop_size
    return inference


def _pipelines(plan: SegmentPlan) -> tuple[list[dict], list[dict]]:
    """(train, test) pipelines: mmseg's augmentations at the plan's crop and resize scale."""
    crop = plan.crop_size
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
    """One split as an mmseg dataset (absolute data root; VOC-root classes passed as metainfo)."""
    template = plan.dataset_template
    dataset = dict(
        type=template["dataset_type"],
        data_root=str(plan.data_root),
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


def _schedulers(family_template: dict, iters: int) -> list[dict]:
    """mmseg 0.x's iteration schedule as mmengine schedulers, all from iteration 0: poly decay over the whole
    run and, for ConvNeXt, a linear warm-up (at most a tenth of the run) multiplying it (mmengine multiplies
    concurrent factors). `end` is one past the last step, as mmengine reaches a scheduler's final value at
    end - 1: lr(t) = (base - min) (1 - t / iters)^power + min, times 1 - (1 - t / warmup)(1 - start) during
    the warm-up, exactly mmcv 1.x's PolyLrUpdaterHook with warmup='linear' (with a warm-up, for min lr 0: the
    ConvNeXt template's)."""
    schedulers = []
    warmup = family_template["warmup"]
    warmup_iters = min(warmup["iters"], iters // 10) if warmup else 0
    if warmup_iters:
        schedulers.append(
            dict(
                type=warmup["type"],
                start_factor=warmup["start_factor"],
                by_epoch=False,
                begin=0,
                end=warmup_iters + 1,
            )
        )
    poly = family_template["poly"]
    schedulers.append(
        dict(
            type=poly["type"],
            power=poly["power"],
            eta_min=poly["eta_min"],
            by_epoch=False,
            begin=0,
            end=iters + 1,
        )
    )
    return schedulers


def _schedule(plan: SegmentPlan, lr: float) -> dict:
    """Optimiser, warm-up + poly schedule, loops and hooks: the family template's optimiser at learning rate
    lr (no paramwise_cfg: weight decay on every parameter, as the official optimisers)."""
    family_template = plan.family_template
    iters = plan.iters
    optim_wrapper = dict(
        type="OptimWrapper", optimizer=dict(family_template["optimizer"], lr=lr), clip_grad=None
    )
    template = plan.dataset_template
    return dict(
        optim_wrapper=optim_wrapper,
        param_scheduler=_schedulers(family_template, iters),
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


def _vis_backends() -> list[dict]:
    """mmengine's local files and TensorBoard: its loggers write the training loss, lr and every validation's
    metrics to each backend, TensorBoard's into RUN/tb beside result.json as every vicregl run."""
    return [
        dict(type="LocalVisBackend"),
        dict(type="TensorboardVisBackend", save_dir="{{ fileDirname }}/" + TB_DIR),
    ]


def build_config(plan: SegmentPlan, weights: WeightsRef, lr: float) -> dict:
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
        model=_model(plan, weights),
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
        vis_backends=_vis_backends(),
        visualizer=dict(type="SegLocalVisualizer", vis_backends=_vis_backends()),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        load_from=None,
        resume=False,
    )
    if settings.processes > 1 and not settings.frozen:
        config["sync_bn"] = "torch"
    return _apply_cfg_options(config, settings.cfg_options)


def _apply_cfg_options(config: dict, options: Sequence[str]) -> dict:
    """mmengine's `--cfg-options key=value` semantics (dotted keys; values parsed as numbers, lists, ...)."""
    if not options:
        return config
    from mmengine.config import Config, DictAction  # the optional `seg` extra: only with --cfg-options

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
        raise UserError(f"--cfg-options {list(options)}: {error}") from None
    return merged.to_dict()


def config_text(config: dict, header: str) -> str:
    """The config as a Python file mmengine reads (`{{ fileDirname }}` resolves to the file's folder)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in config.items():
        lines.append(f"{key} = {pprint.pformat(value, width=110, sort_dicts=False)}")
    return "\n".join(lines) + "\n"
