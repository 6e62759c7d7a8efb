"""The backbone registry (name -> architecture, widths) and the one loader for every accepted weight file."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vicregl_cli.convnext import ConvNeXtTrunk
from vicregl_cli.errors import UserError
from vicregl_cli.resnet import ResNetTrunk

MAX_KEYS_IN_MESSAGE = 20


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the code needs to know about a backbone without building it."""

    name: str
    family: str  # "resnet" | "convnext"
    stage_widths: tuple[int, int, int, int]
    output_stride: int  # 32 for every registry entry
    representation_size: int  # == stage_widths[-1]
    norm: str  # "batch" (resnet) | "layer" (convnext): the norm the projector heads use


def _resnet_spec(name: str, expansion: int, widen: int) -> BackboneSpec:
    widths = tuple(64 * widen * expansion * 2**i for i in range(4))
    return BackboneSpec(name, "resnet", widths, 32, widths[-1], "batch")


def _convnext_spec(name: str, first_width: int) -> BackboneSpec:
    widths = tuple(first_width * 2**i for i in range(4))
    return BackboneSpec(name, "convnext", widths, 32, widths[-1], "layer")


_RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int], int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1),
    "resnet50x2": (Bottleneck, (3, 4, 6, 3), 2),
    "resnet50x4": (Bottleneck, (3, 4, 6, 3), 4),
    "resnet200x2": (Bottleneck, (3, 24, 36, 3), 2),
}
_CONVNEXTS: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "convnext_tiny": ((3, 3, 9, 3), 96),
    "convnext_small": ((3, 3, 27, 3), 96),
    "convnext_base": ((3, 3, 27, 3), 128),
    "convnext_large": ((3, 3, 27, 3), 192),
    "convnext_xlarge": ((3, 3, 27, 3), 256),
}

BACKBONES: dict[str, BackboneSpec] = {
    **{name: _resnet_spec(name, block.expansion, widen) for name, (block, _, widen) in _RESNETS.items()},
    **{name: _convnext_spec(name, first_width) for name, (_, first_width) in _CONVNEXTS.items()},
}

_OVERRIDES = {
    "resnet": ("zero_init_residual", "replace_stride_with_dilation"),
    "convnext": ("drop_path_rate", "layer_scale_init_value"),
}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`; an unknown name is a UserError that lists the valid ones."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """A randomly initialised backbone (module with `.spec`, `forward`, `forward_stages`).

    ResNet overrides: zero_init_residual (default True, as VICReg/VICRegL pretrain),
    replace_stride_with_dilation (3 bools; the module's spec.output_stride follows).
    ConvNeXt overrides: drop_path_rate (default 0.1), layer_scale_init_value (default 0: no `gamma`).
    """
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(_OVERRIDES[spec.family]))
    if unknown:
        options = ", ".join(_OVERRIDES[spec.family])
        raise UserError(f"{name} does not take {', '.join(unknown)}; its options are: {options}")
    if spec.family == "convnext":
        depths, _ = _CONVNEXTS[name]
        return ConvNeXtTrunk(spec, depths, **overrides)
    block, layers, widen = _RESNETS[name]
    dilation = tuple(overrides.get("replace_stride_with_dilation", (False, False, False)))
    if len(dilation) != 3:
        raise UserError(f"replace_stride_with_dilation needs 3 booleans, got {dilation}")
    if any(dilation) and block is BasicBlock:
        raise UserError(f"{name} has basic blocks, which torchvision cannot dilate: use resnet50 or deeper")
    spec = dataclasses.replace(spec, output_stride=32 // 2 ** sum(bool(d) for d in dilation))
    return ResNetTrunk(spec, block, layers, widen, **overrides)


@cache
def parameter_count(name: str) -> int:
    """Number of parameters of the registry entry, counted on the `meta` device (no memory, no init time)."""
    with torch.device("meta"):
        model = build_backbone(name)
    return sum(parameter.numel() for parameter in model.parameters())


def _torch_load(path: Path) -> Any:
    """torch.load, weights_only=True; a zip checkpoint pickling other objects falls back, with a warning."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a bad file raises UnpicklingError, RuntimeError, KeyError, EOFError...
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise UserError(f"{path} is not a PyTorch checkpoint ({_first_line(error)})") from error
    warnings.warn(
        f"{path} stores Python objects besides tensors ({', '.join(unsafe)}), which weights_only=True"
        " refuses; loading it with weights_only=False: only do so for files you trust",
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any failure to unpickle the file is reported as the file's fault
        raise UserError(f"{path} could not be read as a PyTorch checkpoint ({_first_line(error)})") from error


def _unsafe_globals(path: Path) -> list[str]:
    """The non-tensor globals a zip-format torch file pickles ([] for a corrupt or non-zip file)."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a corrupt archive: the caller reports "not a PyTorch checkpoint"
        return []


def _first_line(error: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters) for a one-line UserError."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    more = len(keys) - MAX_KEYS_IN_MESSAGE
    return f"{shown} (and {more} more)" if more > 0 else shown


def _backbone_keys(state_dict: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """Strip DDP `module.`, torch.compile `_orig_mod.` and `backbone.` prefixes; drop a ResNet's `fc.*`."""
    bad = [str(k) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise UserError(f"{path}: the state dict has entries that are not tensors: {_key_list(bad)}")
    state = {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    if any(key.startswith("backbone.") for key in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    return state


def read_backbone_state(path: str | Path) -> tuple[str | None, dict[str, Tensor]]:
    """(stored backbone name or None, bare backbone state dict) from any accepted file (docs/backbones.md)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist (or is not a file)")
    stored = _torch_load(path)
    if not isinstance(stored, Mapping):
        raise UserError(f"{path} holds a {type(stored).__name__}, not a checkpoint or state dict")
    name = stored.get("backbone_name")
    if name is not None and not isinstance(name, str):
        raise UserError(f"{path}: 'backbone_name' is a {type(name).__name__}, not a string")
    for container in ("state_dict", "model"):
        inner = stored.get(container)
        if inner is not None and not isinstance(inner, Tensor):
            if not isinstance(inner, Mapping):
                raise UserError(f"{path}: '{container}' is a {type(inner).__name__}, not a state dict")
            return name, _backbone_keys(inner, path)
    if name is not None:
        raise UserError(f"{path} names backbone {name!r} but holds neither 'state_dict' nor 'model'")
    return None, _backbone_keys(stored, path)


def load_backbone(name: str | None, path: str | Path | None, **overrides: Any) -> nn.Module:
    """A backbone with the weights of `path` loaded strictly (random init when path is None).

    name None -> the name stored in the file. A name that disagrees with the stored one, or any missing,
    unexpected or mis-shaped key, is a UserError naming the keys. `overrides` go to build_backbone.
    """
    if path is None:
        if name is None:
            raise UserError("no backbone name and no weights file: pass --backbone NAME")
        return build_backbone(name, **overrides)
    stored_name, state = read_backbone_state(path)
    if name is None:
        if stored_name is None:
            raise UserError(f"{path} does not store a backbone name: pass --backbone NAME")
        name = stored_name
    elif stored_name is not None and stored_name != name:
        raise UserError(f"{path} holds a {stored_name} backbone, not {name}: pass --backbone {stored_name}")
    with torch.device("meta"):  # no random init of weights that the file replaces
        model = build_backbone(name, **overrides)
    _check_keys(model, state, name, Path(path))
    for key, buffer in model.state_dict().items():
        if key not in state:  # only a BN `num_batches_tracked` gets here: a counter, not a weight
            state[key] = torch.zeros_like(buffer, device="cpu")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model


def _check_keys(model: nn.Module, state: dict[str, Tensor], name: str, path: Path) -> None:
    """UserError naming each missing, unexpected, mis-shaped key (BN `num_batches_tracked` may be absent)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    gammas = [k for k in missing + unexpected if k.endswith(".gamma")]
    if gammas:
        problems.append("(`gamma` keys are ConvNeXt layer scale: set layer_scale_init_value to match)")
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in {name}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mis_shaped:
        problems.append(f"shape mismatches: {_key_list(mis_shaped)}")
    if problems:
        raise UserError(f"{path} does not fit backbone {name}: " + "; ".join(problems))


def save_backbone(path: str | Path, name: str, state_dict: Mapping[str, Tensor]) -> None:
    """Write {"backbone_name": name, "state_dict": CPU copy of state_dict} atomically (temporary + rename)."""
    get_spec(name)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    torch.save({"backbone_name": name, "state_dict": cpu_state}, temporary)
    os.replace(temporary, path)


def weights_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a weights file, read in 1 MiB chunks (results records name the exact weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(partial(handle.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
