"""The retrieval memory: each training patch's label histogram (mean one-hot of its pixels, ignore counted as
background as open-hummingbird-eval does) and the reference's class-balanced choice of patches per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vicregl_cli.dense.data import IGNORE


def patch_histograms(masks: Tensor, grid: int, num_classes: int) -> Tensor:
    """(B, grid², num_classes) share of each patch's pixels per class, patches row-major; masks (B, S, S) with
    S a multiple of `grid`. Ignore pixels (255) count as class 0, as in the reference's memory."""
    batch, size, _ = masks.shape
    patch = size // grid
    labels = torch.where(masks == IGNORE, 0, masks).long()
    rows = torch.arange(size, device=masks.device) // patch
    patch_index = rows[:, None] * grid + rows[None, :]  # (S, S): the patch each pixel falls in
    flat = (torch.arange(batch, device=masks.device)[:, None, None] * grid**2 + patch_index) * num_classes
    counts = torch.bincount((flat + labels).flatten(), minlength=batch * grid**2 * num_classes)
    return counts.view(batch, grid**2, num_classes).float() / patch**2


def balanced_patches(histograms: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, count) indices of the patches each image keeps: the `count` lowest scores, a patch's score being
    the sum over the classes it holds of how many of the image's patches hold that class, times a uniform
    draw — so patches of an image's rare classes come first (open-hummingbird-eval's sampling)."""
    present = (histograms > 0).float()
    frequency = present.sum(dim=1, keepdim=True)  # (B, 1, C): patches of the image holding each class
    scores = (present * frequency).sum(dim=2)
    uniform = torch.rand(scores.shape, generator=generator).to(scores.device)
    return (scores * uniform).topk(count, dim=1, largest=False).indices


@dataclass
class Memory:
    """Unit-norm patch features (N, D) and their label histograms (N, C), filled batch by batch."""

    features: list[Tensor]
    labels: list[Tensor]

    def add(self, features: Tensor, histograms: Tensor, keep: Tensor | None) -> None:
        """Store a batch's (B, P, D) features and (B, P, C) histograms, only the `keep` (B, n) patches
        when given."""
        if keep is not None:
            features = features.gather(1, keep[..., None].expand(-1, -1, features.shape[2]))
            histograms = histograms.gather(1, keep[..., None].expand(-1, -1, histograms.shape[2]))
        features = torch.nn.functional.normalize(features.flatten(0, 1).float(), dim=1)
        self.features.append(features.cpu())
        self.labels.append(histograms.flatten(0, 1).cpu())

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(features (N, D), histograms (N, C))."""
        return torch.cat(self.features), torch.cat(self.labels)
