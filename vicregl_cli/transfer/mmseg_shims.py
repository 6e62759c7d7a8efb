"""Two fixes that let mmsegmentation 1.2.2 / mmengine 0.10.7 run on mmcv-lite under torch >= 2.6, each applied
only when needed: a pure-torch stand-in for the compiled `mmcv.ops` that mmseg imports at import time
(needed by the `seg-lite` extra's mmcv-lite; a full mmcv 2.0 / 2.1, as GPU clusters install it, is used as it
is), and a local checkpoint loader that can read the checkpoints mmengine's Runner itself writes (resume)."""

from __future__ import annotations

import importlib
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import Tensor

from vicregl_cli.errors import UserError


def point_sample(input: Tensor, points: Tensor, align_corners: bool = False, **kwargs) -> Tensor:
    """mmcv.ops.point_sample: bilinear samples of `input` (N, C, H, W) at `points` in [0, 1] (N, P, 2) or
    (N, Hp, Wp, 2), as (N, C, P) or (N, C, Hp, Wp)."""
    add_dim = points.dim() == 3
    grid = points.unsqueeze(2) if add_dim else points
    output = F.grid_sample(input, 2.0 * grid - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """mmcv.ops.sigmoid_focal_loss: `input` (N, C) logits, `target` (N,) class indices (C = no class);
    -alpha (1-p)^gamma log p on the target class, -(1-alpha) p^gamma log(1-p) elsewhere; optional row weights.
    """
    probability = input.sigmoid()
    one_hot = F.one_hot(target.long(), input.shape[1] + 1)[:, : input.shape[1]].to(input.dtype)
    positive = -alpha * (1 - probability).pow(gamma) * F.logsigmoid(input)
    negative = -(1 - alpha) * probability.pow(gamma) * F.logsigmoid(-input)
    loss = one_hot * positive + (1 - one_hot) * negative
    if weight is not None:
        loss = loss * weight.view(-1, 1)
    if reduction == "mean":
        return loss.sum() / input.shape[0]
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _missing_compiled_op(name: str):
    """The stand-in's module `__getattr__`: mmseg guards optional ops with `except ModuleNotFoundError`."""
    if name.startswith("__"):
        raise AttributeError(name)
    raise ModuleNotFoundError(f"mmcv.ops.{name} needs the compiled mmcv (full mmcv, not mmcv-lite)")


def compiled_mmcv_ops_available() -> bool:
    """True when the real `mmcv.ops` imports (full mmcv with its compiled extension)."""
    try:
        module = importlib.import_module("mmcv.ops")
    except ImportError:
        return False
    return not getattr(module, "VICREGL_STANDIN", False)


def apply_mmcv_ops_standin() -> bool:
    """Register the pure-torch `mmcv.ops` stand-in when the compiled ops are absent; True if it is in use."""
    if getattr(sys.modules.get("mmcv.ops"), "VICREGL_STANDIN", False):
        return True
    if compiled_mmcv_ops_available():
        return False
    try:
        import mmcv
    except ImportError as error:
        raise UserError(
            "segmentation needs mmcv, which the `seg` extra leaves to you: a full mmcv 2.0 / 2.1 (GPU "
            "clusters; mmseg 1.2.2 refuses 2.2), or pip install 'vicregl[seg-lite]' (mmcv-lite + a stand-in)"
        ) from error

    standin = types.ModuleType("mmcv.ops")
    standin.__doc__ = (
        "vicregl's pure-torch stand-in for the compiled mmcv.ops (point_sample, sigmoid_focal_loss)."
    )
    standin.point_sample = point_sample
    standin.sigmoid_focal_loss = sigmoid_focal_loss
    standin.__getattr__ = _missing_compiled_op
    standin.VICREGL_STANDIN = True
    sys.modules["mmcv.ops"] = standin
    mmcv.ops = standin
    print(
        "vicregl: mmcv.ops (compiled) is absent: pure-torch point_sample, sigmoid_focal_loss", file=sys.stderr
    )
    return True


def _load_trusted_local(filename: str, map_location=None):
    """mmengine's local-file loader with weights_only=False: for checkpoints the Runner wrote itself."""
    path = os.path.expanduser(filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} can not be found.")
    return torch.load(path, map_location=map_location, weights_only=False)


def register_trusted_checkpoint_loader() -> None:
    """Let mmengine resume from its own checkpoints (pickled message hub, numpy state), which torch >= 2.6's
    weights_only=True default refuses. Only call this for checkpoints this tool wrote (our run folder)."""
    from mmengine.runner import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=_load_trusted_local, force=True)
    print("vicregl: resuming: mmengine's local checkpoint loader uses weights_only=False", file=sys.stderr)


def torch_loads_weights_only_by_default() -> bool:
    """torch >= 2.6 defaults torch.load to weights_only=True (mmengine's Runner checkpoints fail to load)."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)
