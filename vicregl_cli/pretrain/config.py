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


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on; defaults are the reference ResNet-50 run (README of
    VICRegL)."""

    data: str = ""  # ImageFolder root (class folders; labels only feed the online probe)
    out: str = "runs/pretrain"
    backbone: str = "resnet50"
    drop_path_rate: float = 0.1  # ConvNeXt stochastic depth (ignored by ResNets)
    mlp: str = "8192-8192-8192"  # expander widths
    maps_mlp: str = "512-512-512"  # per-location projector widths
    alpha: float = 0.75  # alpha * global + (1 - alpha) * local; 1 = VICReg, 0 = local only
    num_matches: list[int] = field(default_factory=lambda: [20, 4])
    l2_all_matches: bool = False  # True keeps every feature-based match (reference default); paper filters
    inv_coeff: float = 25.0
    var_coeff: float = 25.0
    cov_coeff: float = 1.0
    crop_sizes: list[int] = field(default_factory=lambda: [224])
    crop_counts: list[int] = field(default_factory=lambda: [2])
    crop_min_scales: list[float] = field(default_factory=lambda: [0.08])
    crop_max_scales: list[float] = field(default_factory=lambda: [1.0])
    ignore_flips: bool = False  # True: positions ignore horizontal flips, as the reference code does
    blur_probs: list[float] = field(default_factory=lambda: [1.0, 0.1])  # Gaussian blur p, (even, odd) crops
    solarize_probs: list[float] = field(default_factory=lambda: [0.0, 0.2])  # solarisation p, (even, odd)
    optimizer: str = "lars"  # lars | adamw
    base_lr: float = 0.2  # peak lr = base_lr * batch_size / 256
    weight_decay: float = 1e-6
    epochs: int = 300
    warmup_epochs: int = 10
    end_lr_ratio: float = 1e-3
    batch_size: int = 2048  # global, over every process
    precision: str = "bf16"  # bf16 | fp16 | fp32 (CPU always runs fp32)
    num_workers: int = 8  # data-loading processes per training process
    seed: int = 0
    checkpoint_every: int = 1  # epochs
    log_every: int = 50  # steps between stats.jsonl lines
    probe: bool = True  # online linear probe on detached pooled features (labels of the ImageFolder)
    monitor_data: str | None = None  # ImageFolder root (train/, val/): online k-NN top-1@20 (monitor.py)
    monitor_every: int = 1  # epochs between online k-NN evaluations

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
    if config.epochs < 1 or not 0 <= config.warmup_epochs <= config.epochs:
        raise UserError(
            f"epochs {config.epochs} / warmup_epochs {config.warmup_epochs}: need 0 <= warmup <= epochs"
        )
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
