"""Weight files: the one reader for every accepted format, the strict loader, our own writer, and
`WeightsRef`, the resolved `--weights` that every protocol, export and results record takes (the file read
once). The writers into other code bases' layouts are in vicregl_cli/export.py."""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vicregl_cli.backbones.registry import build_backbone, get_spec
from vicregl_cli.errors import UserError, key_list
from vicregl_cli.files import write_atomic
from vicregl_cli.seeding import seeded

RANDOM = "random"
CONVNEXT_LAYER_SCALE = 1e-6  # the official ConvNeXt init, implied by `gamma` keys in a file


@dataclass(frozen=True)
class StoredWeights:
    """What one read of a weights file gives: its SHA-256 and the unpickled object."""

    sha256: str
    content: Any


def read_weights_file(path: str | Path) -> StoredWeights:
    """Read `path` once: hash the bytes and unpickle them (weights_only=True; a zip checkpoint that pickles
    other objects falls back to weights_only=False, with a warning). Every weights read goes through here."""
    path = Path(path)
    if path.is_dir():
        example = path / "backbone.pth"
        raise UserError(f"weights path {path} is a directory; give the file inside it, e.g. {example}")
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist (or is not a file)")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return StoredWeights(sha256, torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as error:  # a bad file raises UnpicklingError, RuntimeError, KeyError, EOFError...
        unsafe = _unsafe_globals(data)
        if not unsafe:
            raise UserError(f"{path} is not a PyTorch checkpoint ({_first_line(error)})") from error
    warnings.warn(
        f"{path} stores Python objects besides tensors ({', '.join(unsafe)}), which weights_only=True"
        " refuses; loading it with weights_only=False: only do so for files you trust",
        stacklevel=2,
    )
    try:
        return StoredWeights(sha256, torch.load(io.BytesIO(data), map_location="cpu", weights_only=False))
    except Exception as error:  # any failure to unpickle the file is reported as the file's fault
        raise UserError(f"{path} could not be read as a PyTorch checkpoint ({_first_line(error)})") from error


def _unsafe_globals(data: bytes) -> list[str]:
    """The non-tensor globals a zip-format torch file pickles ([] for a corrupt or non-zip file)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # a corrupt archive: the caller reports "not a PyTorch checkpoint"
        return []


def _first_line(error: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters) for a one-line UserError."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _backbone_keys(state_dict: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """Strip DDP `module.`, torch.compile `_orig_mod.` and `backbone.` prefixes; drop a ResNet's `fc.*`."""
    bad = [str(k) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise UserError(f"{path}: the state dict has entries that are not tensors: {key_list(bad)}")
    state = {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    if any(key.startswith("backbone.") for key in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    return state


def backbone_state_of(stored: Any, path: Path) -> tuple[str | None, dict[str, Tensor]]:
    """(stored backbone name or None, bare backbone state dict) of an unpickled file (docs/backbones.md)."""
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


def read_backbone_state(path: str | Path) -> tuple[str | None, dict[str, Tensor]]:
    """(stored backbone name or None, bare backbone state dict) from any accepted file."""
    return backbone_state_of(read_weights_file(path).content, Path(path))


def _choose_name(requested: str | None, stored: str | None, path: Path) -> str:
    """--backbone, else the stored name; a disagreement or no name at all is a UserError."""
    if requested is None:
        if stored is None:
            raise UserError(f"{path} does not store a backbone name: pass --backbone NAME")
        requested = stored
    elif stored is not None and stored != requested:
        raise UserError(f"{path} holds a {stored} backbone, not {requested}: pass --backbone {stored}")
    get_spec(requested)
    return requested


def check_keys(model: nn.Module, state: Mapping[str, Tensor], name: str, path: Path) -> None:
    """UserError naming each missing, unexpected, mis-shaped key (BN `num_batches_tracked` may be absent)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {key_list(unexpected)}")
    if any(k.endswith(".gamma") for k in missing + unexpected):
        problems.append("(`gamma` keys are ConvNeXt layer scale: set layer_scale_init_value to match)")
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in {name}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mis_shaped:
        problems.append(f"shape mismatches: {key_list(mis_shaped)}")
    if problems:
        raise UserError(f"{path} does not fit backbone {name}: " + "; ".join(problems))


def _meta_model(name: str, options: Mapping[str, Any]) -> nn.Module:
    """The architecture without memory or random init (weights come from a file)."""
    with torch.device("meta"):
        return build_backbone(name, **options)


def load_state(name: str, state: Mapping[str, Tensor], path: Path, **options: Any) -> nn.Module:
    """A backbone holding `state`, loaded strictly (checked first; `num_batches_tracked` may be absent)."""
    model = _meta_model(name, options)
    check_keys(model, state, name, path)
    complete = dict(state)
    for key, buffer in model.state_dict().items():
        if key not in complete:  # only a BN `num_batches_tracked` gets here: a counter, not a weight
            complete[key] = torch.zeros_like(buffer, device="cpu")
    model = model.to_empty(device="cpu")
    model.load_state_dict(complete, strict=True)
    return model


def load_backbone(name: str | None, path: str | Path | None, **overrides: Any) -> nn.Module:
    """A backbone with the weights of `path` loaded strictly, built with exactly `overrides` (random init when
    path is None). name None -> the name stored in the file."""
    if path is None:
        if name is None:
            raise UserError("no backbone name and no weights file: pass --backbone NAME")
        return build_backbone(name, **overrides)
    stored_name, state = read_backbone_state(path)
    return load_state(_choose_name(name, stored_name, Path(path)), state, Path(path), **overrides)


def implied_options(name: str, state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Build options a file implies: ConvNeXt `gamma` keys mean layer scale (the official release has it)."""
    if get_spec(name).family == "convnext" and any(key.endswith(".gamma") for key in state):
        return {"layer_scale_init_value": CONVNEXT_LAYER_SCALE}
    return {}


@dataclass(frozen=True)
class WeightsRef:
    """A resolved `--weights`: the file (None for random init), the backbone, its SHA-256 and the build
    options the file implies. The tensors read at resolution are kept in memory (not pickled: a SLURM job
    reads the file again and refuses it if its hash changed), so a command reads the file once."""

    path: Path | None
    backbone: str
    sha256: str | None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # random init seed (path None)
    tensors: dict[str, Tensor] | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "tensors": None}

    @property
    def is_random(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str:
        """How tables and plans name these weights: `random(seed=0)` or `file.pth (1a2b3c4d)`."""
        if self.path is None:
            return f"{RANDOM}(seed={self.seed})"
        return f"{self.path.name} ({self.sha256[:8]})"

    def record(self) -> dict[str, Any]:
        """The `weights` entry of a results record."""
        if self.path is None:
            return {"path": RANDOM, "sha256": None, "seed": self.seed}
        return {"path": str(self.path), "sha256": self.sha256, "seed": None}

    def state_dict(self) -> dict[str, Tensor]:
        """The backbone tensors of the file (random init: of the seeded init), bare keys, on the CPU."""
        if self.path is None:
            return {key: value.detach() for key, value in self.build().state_dict().items()}
        tensors = self.tensors
        if tensors is None:
            stored = read_weights_file(self.path)
            if stored.sha256 != self.sha256:
                raise UserError(
                    f"{self.path} changed since it was resolved (sha256 {self.sha256[:12]} -> "
                    f"{stored.sha256[:12]}): rerun the command"
                )
            tensors = backbone_state_of(stored.content, self.path)[1]
            object.__setattr__(self, "tensors", tensors)
        return tensors

    def build(self, **overrides: Any) -> nn.Module:
        """The backbone with these weights (CPU); random init is seeded without touching the global RNG."""
        options = {**self.options, **overrides}
        if self.path is None:
            with seeded(self.seed):
                return build_backbone(self.backbone, **options)
        return load_state(self.backbone, self.state_dict(), self.path, **options)


def resolve_weights(arg: str | Path, backbone: str | None = None, seed: int = 0) -> WeightsRef:
    """`--weights` (a file or `random`) and `--backbone` -> a WeightsRef, every check done here: the file
    exists and reads, the name agrees with the stored one, and every key fits the architecture."""
    if str(arg) == RANDOM:
        if backbone is None:
            raise UserError("--weights random needs --backbone NAME (which architecture to initialise)")
        get_spec(backbone)
        return WeightsRef(path=None, backbone=backbone, sha256=None, seed=seed)
    path = Path(arg).expanduser()
    if not path.exists():
        raise UserError(f"weights file {path} does not exist; give a checkpoint path or `random`")
    stored = read_weights_file(path)
    stored_name, state = backbone_state_of(stored.content, path)
    name = _choose_name(backbone, stored_name, path)
    options = implied_options(name, state)
    check_keys(_meta_model(name, options), state, name, path)
    return WeightsRef(path.resolve(), name, stored.sha256, options, seed, state)


def save_backbone(path: str | Path, name: str, state_dict: Mapping[str, Tensor]) -> None:
    """Write {"backbone_name": name, "state_dict": CPU copy of state_dict} atomically (temporary + rename)."""
    get_spec(name)
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    write_atomic(path, partial(torch.save, {"backbone_name": name, "state_dict": cpu_state}))


def weights_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (tests and records compare it with WeightsRef.sha256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
