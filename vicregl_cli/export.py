"""Every weights writer: a resolved backbone (`WeightsRef`) in the layout another code base loads with its own
loader — torchvision ResNet, timm (ConvNeXt through timm's own key conversion), an mmseg backbone checkpoint,
detectron2's model-zoo `.pkl`, and the official VICRegL release. `vicregl export`, `segment --export-only` and
`detect --export-only` all write through here (docs/export.md)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vicregl_cli.backbones.registry import get_spec
from vicregl_cli.backbones.weights import WeightsRef
from vicregl_cli.errors import UserError
from vicregl_cli.files import check_writable_file, write_atomic
from vicregl_cli.protocol_defaults import EXPORT_TARGETS as TARGETS

# Registry ResNets that torchvision and timm build under the same name (same blocks, widths and 7 × 7 stem).
STANDARD_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
MMSEG_PREFIX = "backbone."
TORCHVISION_KEY = re.compile(r"^(conv1|bn1|layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01]))\.(\w+)$")


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the file, the target, the number of tensors, and how the target loads it."""

    path: Path
    target: str
    num_tensors: int
    loader: str


def check_out_file(out: str | Path, target: str) -> Path:
    """The file an export writes: a folder is refused (the file name inside it is the user's choice, said in
    the message), as is a folder that cannot be created or written; checked before any weights are read."""
    suffix = ".pkl" if target == "detectron2" else ".pth"
    return check_writable_file(out, "--out", f"backbone_{target}{suffix}")


def check_target(target: str, backbone: str | None) -> None:
    """UserError unless `target` is a layout and can hold `backbone` (None: the layout name only), checked
    before any weights file is read or converted."""
    if target not in TARGETS:
        raise UserError(f"--to {target!r}: choose one of {', '.join(TARGETS)}")
    if backbone is None:
        return
    family = get_spec(backbone).family
    if target == "torchvision" and backbone not in STANDARD_RESNETS:
        raise UserError(
            f"torchvision has no {backbone}: --to torchvision takes {', '.join(STANDARD_RESNETS)}"
            " (ConvNeXt: --to timm or vicregl)"
        )
    if target == "timm" and family == "resnet" and backbone not in STANDARD_RESNETS:
        raise UserError(
            f"timm has no {backbone} with these keys: --to timm takes convnext_* and "
            + ", ".join(STANDARD_RESNETS)
        )
    if target == "detectron2" and (family != "resnet" or get_spec(backbone).output_stride != 32):
        raise UserError(
            f"detectron2's ResNet stem is a 7 x 7 stride-2 convolution and a max-pool: {backbone} does not"
            " export to it (ResNets with the ImageNet stem do)"
        )


def complete_state(weights: WeightsRef) -> dict[str, Tensor]:
    """The backbone's full state (BatchNorm counters a file may omit included), detached, on the CPU."""
    return {key: value.detach().cpu() for key, value in weights.build().state_dict().items()}


def release_state(backbone: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official VICRegL release layout: the bare trunk state dict (hubconf loads it strictly). Its
    ConvNeXt has no layer scale (the reference builds it with layer_scale_init_value 0), so a `gamma` is
    folded into the block's pwconv2, which computes the same function."""
    released = dict(state)
    for gamma_key in [key for key in state if key.endswith(".gamma")]:
        block = gamma_key.removesuffix("gamma")
        gamma = released.pop(gamma_key)
        released[f"{block}pwconv2.weight"] = state[f"{block}pwconv2.weight"] * gamma[:, None]
        released[f"{block}pwconv2.bias"] = state[f"{block}pwconv2.bias"] * gamma
    return released


def timm_state(backbone: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm's layout for timm.create_model(backbone) (its classifier `head.fc` left out). ConvNeXt keys go
    through timm's own converter of the official layout; absent layer scale becomes gamma = 1 (timm's blocks
    always have one), which leaves every output unchanged. timm's ResNets use torchvision's keys."""
    if get_spec(backbone).family == "resnet":
        return dict(state)
    import timm  # timm's model zoo (heavy): only when a ConvNeXt is exported for it
    from timm.models.convnext import checkpoint_filter_fn

    with torch.device("meta"):
        reference = timm.create_model(backbone, pretrained=False)
    converted = checkpoint_filter_fn(dict(state), reference)
    for key, value in reference.state_dict().items():
        if key.endswith(".gamma") and key not in converted:
            converted[key] = torch.ones(value.shape)
    return converted


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


def to_detectron2_state(state_dict: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """A torchvision-named ResNet state dict under detectron2's names, as numpy (BN step counters dropped)."""
    return {
        detectron2_name(key): tensor.detach().cpu().numpy()
        for key, tensor in state_dict.items()
        if not key.endswith("num_batches_tracked")
    }


def write_model_zoo_pkl(path: Path, state: Mapping[str, np.ndarray]) -> Path:
    """Write detectron2's model-zoo pickle {"model", "__author__", "matching_heuristics": True} atomically."""
    payload = {"model": dict(state), "__author__": "vicregl", "matching_heuristics": True}

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)

    return write_atomic(path, write)


def export_prefixed(
    path: str | Path, state: Mapping[str, Tensor], prefix: str = MMSEG_PREFIX, reuse: Path | None = None
) -> Path:
    """Save `state` with `prefix` on each key as a plain state dict (what mmengine's Pretrained init reads),
    atomically (torchrun ranks write it too); a hard link to (or copy of) `reuse`, an earlier export of the
    same state, instead when that file exists."""

    def write(temporary: Path) -> None:
        if reuse is not None and reuse.is_file():
            try:
                os.link(reuse, temporary)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copyfile(reuse, temporary)
        else:
            torch.save({f"{prefix}{key}": value.detach().cpu() for key, value in state.items()}, temporary)

    return write_atomic(path, write)


_LOADERS: dict[str, str] = {
    "torchvision": "torchvision.models.{name}().load_state_dict(torch.load(PATH), strict=False)  # fc only",
    "timm": "timm.create_model('{name}').load_state_dict(torch.load(PATH), strict=False)  # head.fc only",
    "mmseg": "backbone init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')",
    "detectron2": "MODEL.WEIGHTS PATH (DetectionCheckpointer, matching_heuristics)",
    "vicregl": "hubconf / evaluate.py --pretrained PATH --arch {name} of facebookresearch/VICRegL",
}


def export_weights(weights: WeightsRef, target: str, out: str | Path) -> Exported:
    """Write `weights` to `out` in `target`'s layout (atomically); checks first, converts, then writes."""
    check_target(target, weights.backbone)
    check_out_file(out, target)
    state = complete_state(weights)
    if target == "mmseg":
        return Exported(export_prefixed(out, state), target, len(state), _LOADERS[target])
    if target == "detectron2":
        converted = to_detectron2_state(state)
        path = write_model_zoo_pkl(Path(out), converted)
        return Exported(path, target, len(converted), _LOADERS[target])
    if target == "timm":
        state = timm_state(weights.backbone, state)
    elif target == "vicregl":
        state = release_state(weights.backbone, state)
    # torchvision: the registry's ResNet keys are torchvision's, written as they are
    path = write_atomic(out, partial(torch.save, state))
    return Exported(path, target, len(state), _LOADERS[target].format(name=weights.backbone))
