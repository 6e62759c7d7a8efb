"""The VICRegL model: registry backbone + expander (global) + per-location maps projector (local) + online
probe.

The loss is alpha * global + (1 - alpha) * local as in the reference code: alpha = 1 builds no maps projector
and skips the local criterion (VICReg); alpha = 0 builds no expander. The optional linear probe reads detached
pooled features of the first view, so its cross-entropy (added to the total) trains the probe only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vicregl_cli.pretrain.losses import LossTerms, global_loss, local_loss


def projection_mlp(in_features: int, widths: list[int], norm: str) -> nn.Sequential:
    """Hidden layers Linear-Norm-ReLU (BatchNorm1d for norm 'batch', LayerNorm for 'layer'); last Linear, no
    bias."""
    sizes = [in_features, *widths]
    layers: list[nn.Module] = []
    for width_in, width_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers.append(nn.Linear(width_in, width_out))
        layers.append(nn.BatchNorm1d(width_out) if norm == "batch" else nn.LayerNorm(width_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class LossWeights:
    """The criterion's settings (coefficients of DESIGN §2)."""

    alpha: float = 0.75
    num_matches: tuple[int, int] = (20, 4)
    l2_all_matches: bool = False
    inv_coeff: float = 25.0
    var_coeff: float = 25.0
    cov_coeff: float = 1.0


class VICRegL(nn.Module):
    """forward(views, positions, labels) -> dict of the total loss (with gradient) and detached log values."""

    def __init__(
        self,
        backbone: nn.Module,
        mlp: list[int],
        maps_mlp: list[int],
        weights: LossWeights,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.weights = weights
        width, norm = backbone.spec.representation_size, backbone.spec.norm
        self.expander = projection_mlp(width, mlp, norm) if weights.alpha > 0.0 else None
        self.maps_projector = projection_mlp(width, maps_mlp, norm) if weights.alpha < 1.0 else None
        self.probe = nn.Linear(width, num_classes) if num_classes > 1 else None

    def forward(
        self, views: list[Tensor], positions: list[Tensor], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        representations, embeddings, maps_embeddings = [], [], []
        for view in views:
            feature_map, pooled = self.backbone(view)
            representations.append(pooled)
            if self.expander is not None:
                embeddings.append(self.expander(pooled))
            if self.maps_projector is not None:
                locations = feature_map.flatten(2).transpose(
                    1, 2
                )  # (B, H*W, C), row-major like the positions
                batch, count, channels = locations.shape
                projected = self.maps_projector(locations.reshape(batch * count, channels))
                maps_embeddings.append(projected.view(batch, count, -1))
        outputs = {"representation": representations[0].detach()}
        total = representations[0].new_zeros((), dtype=torch.float32)
        alpha = self.weights.alpha
        coefficients = dict(
            inv_coeff=self.weights.inv_coeff,
            var_coeff=self.weights.var_coeff,
            cov_coeff=self.weights.cov_coeff,
        )
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            if self.expander is not None:
                terms = global_loss([z.float() for z in embeddings], **coefficients)
                total = total + alpha * terms.total
                outputs.update(_named("global", terms))
                outputs["embedding"] = embeddings[0].detach().float()
            if self.maps_projector is not None:
                terms = local_loss(
                    [m.float() for m in maps_embeddings],
                    [p.float() for p in positions],
                    num_matches=tuple(self.weights.num_matches),
                    l2_all_matches=self.weights.l2_all_matches,
                    **coefficients,
                )
                total = total + (1.0 - alpha) * terms.total
                outputs.update(_named("local", terms))
            if self.probe is not None and labels is not None:
                logits = self.probe(representations[0].detach().float())
                probe_loss = F.cross_entropy(logits, labels)
                total = total + probe_loss
                outputs["probe_loss"] = probe_loss.detach()
                outputs["probe_top1"] = (logits.argmax(dim=1) == labels).float().mean().detach()
        outputs["loss"] = total
        return outputs


def _named(prefix: str, terms: LossTerms) -> dict[str, Tensor]:
    return {
        f"{prefix}_inv": terms.inv.detach(),
        f"{prefix}_var": terms.var.detach(),
        f"{prefix}_cov": terms.cov.detach(),
    }
