"""Planning a pretraining run: join the process group, check every input (UserError) and derive the step
counts and learning rate before any model exists; then build the model and the loader from that plan.

`dry_run` is the plan plus one forward pass on one batch, for `vicregl pretrain --dry-run`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader

from vicregl_cli import distributed
from vicregl_cli.backbones import BackboneSpec, build_backbone, get_spec
from vicregl_cli.data.colour_device import apply_colours
from vicregl_cli.data.decode import read_rgb_uint8
from vicregl_cli.data.file_list import FileList, FileListDataset
from vicregl_cli.data.file_list_cache import cache_path, load_or_list, save_if_settled
from vicregl_cli.data.multicrop import MultiCropConfig, MultiCropTransform, Uint8Views, collate
from vicregl_cli.errors import UserError
from vicregl_cli.files import check_writable_folder
from vicregl_cli.interrupts import ignore_stop_signals
from vicregl_cli.pretrain.config import PretrainConfig, to_dict
from vicregl_cli.pretrain.model import LossWeights, VICRegL
from vicregl_cli.pretrain.optim import peak_lr
from vicregl_cli.pretrain.sampler import EpochBatchSampler, SeededSamples
from vicregl_cli.seeding import seeded

DRY_RUN_BATCH = 16


@dataclass
class Plan:
    """The validated inputs of a run, built before any model exists."""

    config: PretrainConfig
    env: distributed.DistEnv
    spec: BackboneSpec
    dataset: SeededSamples
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    precision: str


def multicrop_config(config: PretrainConfig, stride: int) -> MultiCropConfig:
    """The multi-crop transform of the run: group 0 = the large views, group 1 (optional) = the small
    views."""
    small = {}
    if len(config.crop_sizes) == 2:
        small = dict(
            small_size=config.crop_sizes[1],
            small_count=config.crop_counts[1],
            small_scale=(config.crop_min_scales[1], config.crop_max_scales[1]),
        )
    return MultiCropConfig(
        large_size=config.crop_sizes[0],
        large_count=config.crop_counts[0],
        large_scale=(config.crop_min_scales[0], config.crop_max_scales[0]),
        stride=stride,
        ignore_flip=config.ignore_flips,
        blur_p=tuple(config.blur_probs),
        solarize_p=tuple(config.solarize_probs),
        **small,
    )


def training_folder(data: str | None) -> Path:
    """--data, the ImageFolder to pretrain on; a root holding train/ and val/ is refused (its validation
    images would be pretrained on), with the folder to give instead."""
    if not data:
        raise UserError("no training data: pass --data DIR (an ImageFolder: DIR/<class>/<image>)")
    root = Path(data).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir():
        raise UserError(
            f"--data {root} holds train/ and val/: pretraining would learn from the validation images too; "
            f"give --data {root / 'train'}"
        )
    return root


def training_dataset(files: FileList, crops: MultiCropConfig, colour_on: str) -> FileListDataset:
    """The training images decoded to uint8 (PIL's pixels, faster: data/decode.py), then the multi-crop
    transform, its colour work on the loader workers or left to the training device (colour_on)."""
    transform = MultiCropTransform(crops, colour_on_device=colour_on == "device")
    return FileListDataset(files, transform=transform, loader=read_rgb_uint8)


def plan_run(config: PretrainConfig, device: str = "auto", write_cache: bool = True) -> Plan:
    """Join the process group and check everything that needs no model: world size, backbone, crops, data.

    The data root's listing comes from its cache in `cache_dir` (default: the run folder) when still current;
    a fresh listing is cached there by the main process when `write_cache`."""
    env = distributed.init_distributed(distributed.resolve_device(device))
    if config.batch_size % env.world_size:
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by the {env.world_size} processes: "
            f"choose a multiple of {env.world_size}"
        )
    spec = get_spec(config.backbone)
    grids = [size // spec.output_stride for size in config.crop_sizes]
    if min(grids) < 1:
        raise UserError(
            f"crop sizes {config.crop_sizes} give feature grids {grids} at stride {spec.output_stride} of "
            f"{config.backbone}: every crop must be at least {spec.output_stride} pixels"
        )
    if config.alpha < 1.0:
        locations = [grid * grid for grid in grids]
        if config.num_matches[0] > locations[0] or config.num_matches[1] > min(locations):
            raise UserError(
                f"num_matches {config.num_matches} exceeds the locations per view {locations} "
                f"(first: large views, {locations[0]}; second: any view, {min(locations)}); "
                "lower --num-matches"
            )
    check_writable_folder(config.out)
    root, cache_dir = training_folder(config.data), config.cache_dir or config.out
    files, from_cache = load_or_list(root, cache_dir, write=False)
    folder = training_dataset(files, multicrop_config(config, spec.output_stride), config.colour_on)
    if len(folder) < config.batch_size:
        raise UserError(
            f"{config.data} holds {len(folder)} images, fewer than one batch of {config.batch_size}: "
            "lower --batch-size"
        )
    if write_cache and distributed.is_main_process() and not from_cache:  # every check passed: write
        save_if_settled(files, cache_path(root, cache_dir))
    steps_per_epoch = len(folder) // config.batch_size
    precision = config.precision if env.device.startswith("cuda") else "fp32"
    return Plan(
        config=config,
        env=env,
        spec=spec,
        dataset=SeededSamples(folder),
        num_classes=len(folder.classes) if config.probe else 0,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
        warmup_steps=steps_per_epoch * config.warmup_epochs,
        peak_lr=peak_lr(config.base_lr, config.batch_size),
        precision=precision,
    )


def build_model(plan: Plan) -> VICRegL:
    """Backbone + heads, initialised from the seed (identical on every rank), on the run's device.

    The weights are drawn in a seeded section (vicregl_cli.seeding): the caller's global RNG state is left
    as it was.
    """
    config = plan.config
    overrides = {"drop_path_rate": config.drop_path_rate} if plan.spec.family == "convnext" else {}
    weights = LossWeights(
        alpha=config.alpha,
        num_matches=tuple(config.num_matches),
        l2_all_matches=config.l2_all_matches,
        inv_coeff=config.inv_coeff,
        var_coeff=config.var_coeff,
        cov_coeff=config.cov_coeff,
    )
    with seeded(config.seed):
        model = VICRegL(
            build_backbone(config.backbone, **overrides),
            config.mlp_widths(),
            config.maps_mlp_widths(),
            weights,
            num_classes=plan.num_classes,
        )
    model = model.to(plan.env.device)
    if plan.env.device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def make_loader(plan: Plan, sampler: EpochBatchSampler) -> DataLoader:
    """Batches of this rank; a private generator keeps the loader from drawing on the global torch RNG."""
    workers = plan.config.num_workers
    return DataLoader(
        plan.dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=plan.env.device.startswith("cuda"),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(plan.config.seed),
        worker_init_fn=ignore_stop_signals,  # the job's SIGTERM / SIGINT reach the workers too: main decides
    )


def autocast_dtype(plan: Plan) -> torch.dtype:
    """The dtype the run computes in under autocast (float32 for fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision, torch.float32)


def autocast(plan: Plan) -> AbstractContextManager:
    """The mixed-precision context of the run's precision (none for fp32), shared by training and dry run."""
    if plan.precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=autocast_dtype(plan))


def to_device(
    plan: Plan, views: list[Tensor] | Uint8Views, positions: list[Tensor], labels: Tensor
) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
    """A collated batch on the run's device (channels-last views on GPU); labels only when the probe is on.

    Uint8 views (colour_on: device) are coloured there from their shipped parameters, on every rank, in
    the autocast dtype: no random draw, nothing read back to the host.
    """
    device = plan.env.device
    channels_last = device.startswith("cuda")
    if isinstance(views, Uint8Views):
        crops = [crop.to(device, non_blocking=True) for crop in views.crops]
        colour = views.colour.to(device, non_blocking=True)
        views = apply_colours(crops, colour, autocast_dtype(plan), channels_last)
    else:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        views = [view.to(device, non_blocking=True, memory_format=memory_format) for view in views]
    positions = [position.to(device, non_blocking=True) for position in positions]
    return views, positions, labels.to(device, non_blocking=True) if plan.num_classes else None


def describe(plan: Plan) -> dict[str, Any]:
    """The figures a dry run prints (and train() logs at start)."""
    return {
        "world_size": plan.env.world_size,
        "device": plan.env.device,
        "precision": plan.precision,
        "per_process_batch": plan.config.batch_size // plan.env.world_size,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "warmup_steps": plan.warmup_steps,
        "peak_lr": plan.peak_lr,
        "images": len(plan.dataset),
        "classes_for_probe": plan.num_classes,
    }


def dry_run(config: PretrainConfig, device: str = "auto") -> dict[str, Any]:
    """Resolve and validate everything, build the model, load one batch and run it forward; train nothing."""
    plan = plan_run(config, device, write_cache=False)
    model = build_model(plan)
    count = min(DRY_RUN_BATCH, config.batch_size // plan.env.world_size)
    batch = collate([plan.dataset[(index, index)] for index in range(count)])
    views, positions, labels = to_device(plan, *batch)
    model.train()
    with torch.no_grad(), autocast(plan):
        outputs = model(views, positions, labels)
    summary = describe(plan)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary["view_shapes"] = [list(view.shape) for view in views]
    summary["positions_shapes"] = [list(position.shape) for position in positions]
    summary["first_batch_loss"] = float(outputs["loss"])
    return summary


def print_summary(summary: dict[str, Any], config: PretrainConfig) -> None:
    """The dry-run report (rank 0 only): resolved configuration, then the figures."""
    if not distributed.is_main_process():
        return
    print(yaml.safe_dump({"config": to_dict(config)}, sort_keys=False), end="")
    for key, value in summary.items():
        print(f"{key}: {value}")
    print("dry run: one batch forward on the planned device; nothing was trained or written")
