"""Optimisers and learning-rate schedule of VICRegL pretraining: LARS (ResNets) and AdamW (ConvNeXts).

LARS follows the reference implementation exactly: weight decay is added to the gradient first, then the
update is scaled by the trust ratio eta * ||w|| / ||g + wd * w|| (1 when either norm is 0); biases and
normalisation parameters (every parameter with fewer than 2 dimensions) get neither weight decay nor the trust
ratio. `timm.optim.Lars` is not used because its ratio is eta * ||w|| / (||g|| + wd * ||w|| + eps): a
different denominator (the NVIDIA LARC form), which changes every step of a ResNet run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from vicregl_cli.errors import UserError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and the layer-wise trust ratio; a group with `adapt=False` is plain SGD with
    momentum."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        adapt: bool = True,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["adapt"]:
                param_norms = torch._foreach_norm(params)
                update_norms = torch._foreach_norm(grads)
                ratios = [
                    torch.where((w > 0) & (g > 0), group["eta"] * w / g, torch.ones_like(w))
                    for w, g in zip(param_norms, update_norms, strict=True)
                ]
                grads = torch._foreach_mul(grads, ratios)
            buffers = [self.state[p].setdefault("mu", torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])


def split_decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights with >= 2 dimensions, biases and normalisation parameters), trainable parameters only."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return decay, no_decay


def build_optimizer(
    model: nn.Module, name: str, weight_decay: float, momentum: float = 0.9, eta: float = 0.001
) -> torch.optim.Optimizer:
    """LARS or AdamW with the reference exclusions: group 0 holds the >= 2-D weights, group 1 the rest (no
    decay)."""
    decay, no_decay = split_decay_groups(model)
    if name == "lars":
        return LARS(
            [
                {"params": decay, "weight_decay": weight_decay, "adapt": True},
                {"params": no_decay, "weight_decay": 0.0, "adapt": False},
            ],
            momentum=momentum,
            eta=eta,
        )
    if name == "adamw":
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=0.0,
        )
    raise UserError(f"unknown optimizer {name!r}: choose 'lars' (ResNets) or 'adamw' (ConvNeXts)")


def peak_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule of the papers: base_lr x global batch / 256."""
    return base_lr * batch_size / 256.0


def learning_rate(
    step: int, peak: float, warmup_steps: int, total_steps: int, end_ratio: float = 1e-3
) -> float:
    """Linear warm-up from 0 over `warmup_steps`, then cosine decay from `peak` to `end_ratio * peak` at the
    end."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return peak
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    end = peak * end_ratio
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group follows the same schedule."""
    for group in optimizer.param_groups:
        group["lr"] = lr
