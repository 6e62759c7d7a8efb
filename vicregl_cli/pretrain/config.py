"""The pretraining configuration: one dataclass, YAML presets (packaged: vicregl_cli/configs/pretrain/*.yaml),
then command-line overrides (generated --flags and KEY=VALUE pairs)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vicregl_cli.errors import UserError
from vicregl_cli.files import write_text_atomic
from vicregl_cli.pretrain.presets import read_config_source


def setting(default: Any, help: str) -> Any:
    """A config field with its command-line help (the flags of `vicregl pretrain` are generated from these);
    a list default is copied for every instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on; defaults are the reference ResNet-50 run (README of
    VICRegL)."""

    data: str = setting("", "ImageFolder root: DATA/<class>/<image>")
    cache_dir: str | None = setting(None, "Folder of DATA's listing cache (file_list-*.npz); none: OUT")
    out: str = setting("runs/pretrain", "Run folder: checkpoint.pth, backbone.pth, stats.jsonl, config.yaml")
    backbone: str = setting("resnet50", "Registry name (vicregl backbones), e.g. resnet50")
    drop_path_rate: float = setting(0.1, "ConvNeXt stochastic depth")
    mlp: str = setting("8192-8192-8192", "Expander widths, e.g. 8192-8192-8192")
    maps_mlp: str = setting("512-512-512", "Per-location projector widths, e.g. 512-512-512")
    alpha: float = setting(0.75, "alpha * global + (1 - alpha) * local; 1 = VICReg")
    num_matches: list[int] = setting([20, 4], "Kept matches per direction, e.g. 20,4")
    l2_all_matches: bool = setting(False, "Keep every feature match (reference code) or filter (paper)")
    inv_coeff: float = setting(25.0, "Invariance coefficient (lambda)")
    var_coeff: float = setting(25.0, "Variance coefficient (mu)")
    cov_coeff: float = setting(1.0, "Covariance coefficient (nu)")
    crop_sizes: list[int] = setting([224], "Crop size per group, e.g. 224,96")
    crop_counts: list[int] = setting([2], "Views per group, e.g. 2,6")
    crop_min_scales: list[float] = setting([0.08], "Min crop scale per group, e.g. 0.4,0.08")
    crop_max_scales: list[float] = setting([1.0], "Max crop scale per group, e.g. 1,0.4")
    ignore_flips: bool = setting(False, "Positions ignore flips (reference code) or mirror them (paper)")
    blur_probs: list[float] = setting([1.0, 0.1], "Gaussian blur probability of even, odd crops")
    solarize_probs: list[float] = setting([0.0, 0.2], "Solarisation probability of even, odd crops")
    optimizer: str = setting("lars", "lars (ResNets) or adamw (ConvNeXts)")
    base_lr: float = setting(0.2, "Peak lr = base_lr x batch_size / 256")
    weight_decay: float = setting(1e-6, "Weight decay (LARS: not on biases and norms)")
    epochs: int = setting(300, "Pretraining epochs")
    warmup_epochs: int = setting(10, "Linear warm-up epochs before the cosine decay")
    end_lr_ratio: float = setting(1e-3, "Final lr of the cosine schedule, as a fraction of the peak")
    batch_size: int = setting(2048, "Global batch size (all processes together)")
    precision: str = setting("bf16", "bf16, fp16 or fp32 (CPU runs fp32)")
    num_workers: int = setting(8, "Data-loading processes per training process")
    colour_on: str = setting(
        "device", "Colour augmentations: device (batched on the training device) or workers (on CPU)"
    )
    seed: int = setting(0, "Model init, augmentation and data-order seed")
    checkpoint_every: int = setting(1, "Epochs between checkpoints")
    log_every: int = setting(50, "Steps between stats.jsonl lines")
    probe: bool = setting(True, "Online linear probe on detached features")
    monitor_data: str | None = setting(None, "Online k-NN monitor: ImageFolder root, train/ and val/")
    monitor_every: int = setting(1, "Epochs between online k-NN evaluations")

    def mlp_widths(self) -> list[int]:
        return parse_widths("mlp", self.mlp)

    def maps_mlp_widths(self) -> list[int]:
        return parse_widths("maps_mlp", self.maps_mlp)


def parse_widths(name: str, text: str) -> list[int]:
    """'8192-8192-8192' -> [8192, 8192, 8192]; anything else is a UserError."""
    try:
        widths = [int(part) for part in str(text).split("-")]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise UserError(
            f"--{name.replace('_', '-')} {text!r}: give layer widths separated by '-', e.g. 8192-8192-8192"
        )
    return widths


FIELDS = {spec.name: spec for spec in dataclasses.fields(PretrainConfig)}
_TYPES = typing.get_type_hints(PretrainConfig)


def type_name(name: str) -> str:
    """A field's type as users write it: int, float, bool, str, list[int], ..."""
    return str(_TYPES[name]).replace("<class '", "").replace("'>", "")


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type (lists also from '224,96'; an optional field
    also from none / null)."""
    target = _TYPES[name]
    try:
        if typing.get_origin(target) is list:
            (item_type,) = typing.get_args(target)
            items = value.split(",") if isinstance(value, str) else list(value)
            return [item_type(item) for item in items]
        if isinstance(target, types.UnionType):
            if isinstance(value, str) and value.lower() in ("none", "null"):
                return None
            target = next(arg for arg in typing.get_args(target) if arg is not type(None))
        if target is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return target(value)
    except (TypeError, ValueError) as error:
        raise UserError(
            f"{name}={value!r}: expected a value of type {type_name(name)}; valid keys: {valid_keys()}"
        ) from error


def valid_keys() -> str:
    """Every field as `name (type)`, for error messages."""
    return ", ".join(f"{name} ({type_name(name)})" for name in FIELDS)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE command-line overrides -> {field: text} (dashes in KEY read as underscores); an unknown key
    or a pair without '=' is a UserError listing the valid keys."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise UserError(f"{pair!r}: write overrides as KEY=VALUE; valid keys: {valid_keys()}")
        if key not in FIELDS:
            raise UserError(f"unknown pretraining key {key!r} in {pair!r}; valid keys: {valid_keys()}")
        values[key] = value
    return values


def load_config(source: str | Path | None, overrides: dict[str, Any]) -> PretrainConfig:
    """Defaults <- `source` (a YAML file, or a packaged preset's name) <- overrides (command-line flags and
    KEY=VALUE pairs; None = not given); then coerced to the field types and validated."""
    values: dict[str, Any] = {} if source is None else dict(read_config_source(source))
    values.update({key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown pretraining option(s) {', '.join(unknown)}; valid keys: {valid_keys()}")
    config = PretrainConfig(**{key: _coerce(key, value) for key, value in values.items()})
    validate(config)
    return config


def validate(config: PretrainConfig) -> None:
    """Range and consistency checks that need no data and no backbone."""
    if not 0.0 <= config.alpha <= 1.0:
        raise UserError(f"alpha {config.alpha} must lie in [0, 1] (1 = VICReg, 0 = local criterion only)")
    if config.optimizer not in ("lars", "adamw"):
        raise UserError(f"optimizer {config.optimizer!r}: choose lars or adamw")
    if config.colour_on not in ("device", "workers"):
        raise UserError(f"colour_on {config.colour_on!r}: choose device or workers")
    if config.precision not in ("bf16", "fp16", "fp32"):
        raise UserError(f"precision {config.precision!r}: choose bf16, fp16 or fp32")
    lengths = {
        len(config.crop_sizes),
        len(config.crop_counts),
        len(config.crop_min_scales),
        len(config.crop_max_scales),
    }
    if len(lengths) != 1 or lengths.pop() not in (1, 2):
        raise UserError(
            "crop_sizes, crop_counts, crop_min_scales and crop_max_scales need one entry per crop group "
            "(1 group: the large views; 2 groups: large then small views)"
        )
    if config.crop_counts[0] < 2 or min(config.crop_counts) < 1:
        raise UserError(
            f"crop_counts {config.crop_counts}: the first group needs at least 2 views, others >= 1"
        )
    for low, high in zip(config.crop_min_scales, config.crop_max_scales, strict=True):
        if not 0.0 < low <= high <= 1.0:
            raise UserError(f"crop scales ({low}, {high}) must satisfy 0 < min <= max <= 1")
    for name in ("blur_probs", "solarize_probs"):
        probabilities = getattr(config, name)
        if len(probabilities) != 2 or not all(0.0 <= p <= 1.0 for p in probabilities):
            raise UserError(f"{name} {probabilities}: give two probabilities in [0, 1] (even, odd crops)")
    if len(config.num_matches) != 2 or min(config.num_matches) < 1:
        raise UserError(f"num_matches {config.num_matches}: give two positive counts, e.g. 20,4")
    if config.epochs < 1 or config.warmup_epochs < 0:
        raise UserError(f"epochs {config.epochs} / warmup_epochs {config.warmup_epochs}: need epochs >= 1, "
                        "warmup_epochs >= 0")  # fmt: skip
    if config.warmup_epochs > config.epochs:
        raise UserError(f"warmup_epochs {config.warmup_epochs} > epochs {config.epochs}: add warmup_epochs=0 "
                        f"(no warm-up; or any value up to {config.epochs})")  # fmt: skip
    if config.batch_size < 2:
        raise UserError(f"batch_size {config.batch_size}: the variance term needs at least 2 samples")
    if config.base_lr <= 0 or config.weight_decay < 0:
        raise UserError("base_lr must be > 0 and weight_decay >= 0")
    if config.checkpoint_every < 1 or config.log_every < 1 or config.num_workers < 0:
        raise UserError("checkpoint_every and log_every must be >= 1, num_workers >= 0")
    config.mlp_widths()
    config.maps_mlp_widths()


def to_dict(config: PretrainConfig) -> dict[str, Any]:
    """Plain values only (YAML- and torch.load(weights_only=True)-safe)."""
    return dataclasses.asdict(config)


def write_config(path: Path, config: PretrainConfig, command_line: list[str], world_size: int) -> None:
    """RUN/config.yaml: the resolved configuration plus how it was launched (write then rename)."""
    record = {"config": to_dict(config), "command_line": command_line, "world_size": world_size}
    write_text_atomic(path, yaml.safe_dump(record, sort_keys=False))
