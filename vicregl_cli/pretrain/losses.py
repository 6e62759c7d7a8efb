"""The VICReg global criterion and the VICRegL local criterion, with the reference code's normalisations.

Papers: A. Bardes, J. Ponce, Y. LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (arXiv:2105.04906), and "VICRegL: Self-Supervised Learning of Local
Visual Features", NeurIPS 2022 (arXiv:2210.01571), Algorithm 1. Semantics as in the reference
implementation, facebookresearch/VICRegL `main_vicregl.py` (`global_loss`, `local_loss`, `_local_loss`,
`_vicreg_loss`, `neirest_neighbores*`), read for understanding; this is an independent implementation.

Global term (`global_loss`), views v = 0..V-1 of embeddings (B, D), N = B × world size:
    inv = λ · mean over the 2(V-1) ordered pairs (i ∈ {0, 1}, j ≠ i) of MSE(e_i, e_j)      (local batch)
    var = μ · mean_v mean_d relu(1 - sqrt(Var_n e_v[:, d] + 1e-4))                         (gathered)
    cov = ν · mean_v Σ_{d≠d'} Cov(e_v)_{dd'}² / D, Cov = centred e_vᵀ e_v / (N - 1)          (gathered)

Local term (`local_loss`), maps (B, L_v, C) with positions (B, L_v, 2), the same ordered pairs. For a
pair (i, j) and one matching (by the distance between positions, or the L2 distance between projected
vectors), direction i → j: each location of i takes its nearest location of j; the K = num_matches[0]
locations of i with the smallest such distance are kept, LISTED IN i'S ROW-MAJOR ORDER (not by distance),
giving x, y (B, K, C); direction j → i likewise keeps K = num_matches[1] locations of j. Statistics per
match slot k, over the gathered, centred batch:
    inv_dir = λ · mean((x - y)²)                                                            (local batch)
    var_dir = μ · (mean_{k,c} relu(1 - sqrt(Var x[:, k, c] + 1e-4)) / 2 + the same for y / 2)
    cov_dir = ν · (mean_k Σ_{c≠c'} Cov(x[:, k])_{cc'}² / C / 2 + the same for y / 2)
Each term of a pair = (i → j + j → i) / 2 for the feature matching PLUS the same for the location
matching; the local inv, var and cov are the means over the pairs. `total` = inv + var + cov in both
functions.

Deviations from the reference code, all deliberate:
- Feature matches are filtered to num_matches by default (`l2_all_matches=False`, the paper). The reference's
  default (`--l2_all_matches 1`) keeps every feature match: pass `l2_all_matches=True` for parity.
- Flips: positions come from the caller. Our multi-crop mirrors the columns of a flipped crop (the paper); the
  reference ignores flips (the multi-crop's ignore-flips option restores parity).
- Ties (equal distances, e.g. two crops with the same box): the nearest candidate is the first in row-major
  order and the γ-best filter prefers the earlier input location (stable sort); the reference's topk and
  unstable sort leave ties unspecified.
- Matching distances are float64 (features |a|² + |b|² - 2a·b, positions exact differences) where the
  reference uses float32 `torch.cdist`: matches agree except where two distances agree to float32 rounding.
- Statistics run in float32 with autocast disabled whatever the input dtype; the reference runs its loss under
  autocast (half-precision covariances on GPU).
- Global normalisation is VICRegL's (variance and covariance averaged over views). The VICReg code, for two
  views, halves each side's variance (the same value as ours) but SUMS the two covariances: its
  covariance term is twice ours, so `cov_coeff=2.0` reproduces the VICReg code's objective exactly.
- The reference's `--fast-vc-reg` approximation is not offered.

Speed (DESIGN §5): Σ_{c≠c'} Cov_{cc'}² = ‖Cov‖²_F - Σ_c Cov_cc² and ‖XᵀX‖_F = ‖XXᵀ‖_F, so a slot whose
gathered batch N is smaller than C uses its N × N Gram matrix (N²C flops instead of NC²); otherwise it
forms the C × C covariance and zeroes the diagonal (exact). All slots of all pairs, directions and
matchings go through one batched computation; identical slots (a whole view under `l2_all_matches`) are
computed once and weighted by their multiplicity. On the Gram side the hand-written backward needs one
matmul per slot instead of autograd's two (the covariance side recomputes its C × C matrix rather than
storing it). Slots are gathered in cache-sized chunks and gathered again in the backward instead of being
stored, so the criterion keeps O(U · N²) floats for U slots where the reference keeps every slot and its
C × C covariance. Precision of the Gram form: with N - 1 < C the covariance has rank < C, so ‖Cov‖²_F ≥
(tr Cov)² / (N - 1) and the subtraction cancels only when the variance sits in a few channels. Measured
(B = 64 and 12, C = 512, incl. variance concentrated in 4 channels): terms within 3e-7 and gradients within
6e-7 relative of float32/float64 references (tests/test_losses.py asserts 1e-5; benchmarks/bench_loss.py).

Across ranks, maps and embeddings are all-gathered once per call with gradient
(`distributed.gather_with_grad`); the invariance terms use the rank's own samples, as in the reference,
so a rank's reported inv is its local value (the mean over ranks equals the one-process value).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vicregl_cli.distributed import gather_with_grad
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.matching import distinct_slots, match_all, match_locations

__all__ = ["LossTerms", "global_loss", "local_loss", "match_all", "match_locations", "slot_statistics"]


class LossTerms(NamedTuple):
    """The three weighted VICReg terms (0-d tensors) and their sum."""

    inv: Tensor
    var: Tensor
    cov: Tensor
    total: Tensor


def _terms(inv: Tensor, var: Tensor, cov: Tensor) -> LossTerms:
    return LossTerms(inv=inv, var=var, cov=cov, total=inv + var + cov)


def _chunks(total: int, row_width: int, device: torch.device) -> list[slice]:
    """Slices of `total` items of `row_width` floats each: ~2 MB pieces on CPU (they stay in cache and reuse
    the allocator's memory instead of faulting in fresh pages); ~256 MB on GPU (few launches, bounded)."""
    per_chunk = max(1, (1 << (26 if device.type == "cuda" else 19)) // row_width)
    return [slice(start, min(start + per_chunk, total)) for start in range(0, total, per_chunk)]


def _take_rows(flat: Tensor, rows: Tensor, buffer: Tensor) -> Tensor:
    """flat[rows] written into the front of a reused buffer (no fresh allocation per chunk)."""
    return torch.index_select(flat, 0, rows, out=buffer[: rows.shape[0]])


class _SlotStatistics(torch.autograd.Function):
    """Rows `index` of `flat` (C wide) as U slots of N samples (row index[u·N + n] is sample n of slot u):
    per slot, the variance hinge and the off-diagonal covariance energy. Slots are gathered chunk by chunk,
    and again in the backward pass instead of being kept: memory O(U·N²) on the N × N side."""

    @staticmethod
    def forward(ctx, flat: Tensor, index: Tensor, samples: int) -> tuple[Tensor, Tensor]:
        channels = flat.shape[1]
        gram_side = samples < channels
        parts = _chunks(index.shape[0] // samples, samples * channels, flat.device)
        buffer = flat.new_empty(2, (parts[0].stop - parts[0].start) * samples, channels)
        means, column_squares, energies, grams = [], [], [], []
        for part in parts:
            centred = _take_rows(flat, index[part.start * samples : part.stop * samples], buffer[0])
            centred = centred.view(-1, samples, channels)
            means.append(centred.mean(dim=1, keepdim=True))
            centred.sub_(means[-1])
            squares = torch.mul(
                centred, centred, out=buffer[1, : centred.numel() // channels].view_as(centred)
            )
            column_squares.append(squares.sum(dim=1))  # (k, C) = (N - 1) · Var
            if gram_side:  # Σ_{c≠c'} (XᵀX)_{cc'}² = ‖XXᵀ‖²_F - Σ_c (XᵀX)_cc²
                gram = torch.bmm(centred, centred.transpose(1, 2))
                grams.append(gram)
                energies.append(gram.square().sum(dim=(1, 2)) - column_squares[-1].square().sum(dim=1))
            else:  # the C × C covariance with its diagonal zeroed: exact
                covariance = torch.bmm(centred.transpose(1, 2), centred)
                covariance.diagonal(dim1=1, dim2=2).zero_()
                energies.append(covariance.square().sum(dim=(1, 2)))
        column_squares = torch.cat(column_squares)
        std = torch.sqrt(column_squares / (samples - 1) + 1e-4)
        hinge = F.relu(1.0 - std).mean(dim=-1)
        scale = 1.0 / ((samples - 1) ** 2 * channels)
        saved_grams = torch.cat(grams) if gram_side else torch.empty(0, device=flat.device)
        ctx.save_for_backward(flat, index, torch.cat(means), column_squares, std, saved_grams)
        ctx.samples, ctx.scale, ctx.gram_side = samples, scale, gram_side
        return hinge, torch.cat(energies) * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hinge: Tensor, grad_energy: Tensor) -> tuple[Tensor, None, None]:
        flat, index, means, column_squares, std, grams = ctx.saved_tensors
        samples, channels = ctx.samples, flat.shape[1]
        # d hinge / d column_squares, and d column_squares / d X = 2X; d energy / d X = 4 (XXᵀX - X ∘ diag) on
        # the Gram side, 4 X Cov_off on the other. Both have zero column means for a centred X, so the
        # centring needs no backward of its own.
        hinge_slope = torch.where(std < 1.0, -0.5 / (std * (samples - 1) * channels), 0.0)
        per_channel = 2.0 * grad_hinge[:, None] * hinge_slope
        energy_grad = (4.0 * ctx.scale * grad_energy)[:, None, None]
        if ctx.gram_side:
            per_channel = per_channel - energy_grad[:, :, 0] * column_squares
        flat_grad = torch.zeros_like(flat)
        parts = _chunks(means.shape[0], samples * channels, flat.device)
        buffer = flat.new_empty(2, (parts[0].stop - parts[0].start) * samples, channels)
        for part in parts:
            rows = index[part.start * samples : part.stop * samples]
            centred = _take_rows(flat, rows, buffer[0]).view(-1, samples, channels).sub_(means[part])
            grad = torch.mul(
                centred, per_channel[part, None, :], out=buffer[1, : rows.shape[0]].view_as(centred)
            )
            if ctx.gram_side:
                grad.baddbmm_(grams[part] * energy_grad[part], centred)
            else:
                covariance = torch.bmm(centred.transpose(1, 2), centred)
                covariance.diagonal(dim1=1, dim2=2).zero_()
                grad.baddbmm_(centred, covariance.mul_(energy_grad[part]))
            flat_grad.index_add_(0, rows, grad.view(-1, channels))
        return flat_grad, None, None


def slot_statistics(flat: Tensor, index: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """Slots of N = `samples` rows of `flat` (row index[u·N + n] is sample n of slot u), for each slot over
    its samples: mean_c relu(1 - sqrt(Var_c + 1e-4)) and Σ_{c≠c'} Cov_{cc'}² / C (Cov with divisor N - 1)."""
    if samples < 2:
        raise UserError(f"variance and covariance need at least 2 samples over all ranks, got {samples}")
    return _SlotStatistics.apply(flat, index, samples)


class _PairedSquaredError(torch.autograd.Function):
    """‖flat[i] - flat[j]‖² for each pair of rows (i, j) of `first`, `second`; chunked, nothing large kept."""

    @staticmethod
    def _differences(flat: Tensor, first: Tensor, second: Tensor):
        parts = _chunks(first.shape[0], flat.shape[1], flat.device)
        buffer = flat.new_empty(2, parts[0].stop - parts[0].start, flat.shape[1])
        for part in parts:
            difference = _take_rows(flat, first[part], buffer[0])
            yield part, difference.sub_(_take_rows(flat, second[part], buffer[1]))

    @staticmethod
    def forward(ctx, flat: Tensor, first: Tensor, second: Tensor) -> Tensor:
        ctx.save_for_backward(flat, first, second)
        return torch.cat(
            [d.mul_(d).sum(dim=1) for _, d in _PairedSquaredError._differences(flat, first, second)]
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        flat, first, second = ctx.saved_tensors
        flat_grad = torch.zeros_like(flat)
        for part, difference in _PairedSquaredError._differences(flat, first, second):
            scaled = difference.mul_(2.0 * grad[part, None])
            flat_grad.index_add_(0, first[part], scaled).index_add_(0, second[part], scaled, alpha=-1.0)
        return flat_grad, None, None


def global_loss(
    embeddings: list[Tensor], inv_coeff: float = 25.0, var_coeff: float = 25.0, cov_coeff: float = 1.0
) -> LossTerms:
    """VICReg criterion over V ≥ 2 views of (B, D) embeddings, VICRegL's normalisation (module docstring)."""
    if len(embeddings) < 2:
        raise ValueError(f"global_loss needs at least 2 views, got {len(embeddings)}")
    shape = embeddings[0].shape
    if len(shape) != 2 or any(e.shape != shape for e in embeddings):
        raise ValueError(
            f"every embedding must be (B, D) of one shape, got {[tuple(e.shape) for e in embeddings]}"
        )
    with torch.autocast(embeddings[0].device.type, enabled=False):
        stacked = torch.stack([e.float() for e in embeddings])  # (V, B, D)
        # every (i ∈ {0, 1}, j) difference: the 2(V - 1) pairs j ≠ i plus i = j, which add zeros (no index
        # tensor to copy from the host)
        differences = stacked[:2, None] - stacked[None]  # (2, V, B, D)
        inv = inv_coeff * differences.pow(2).sum() / (2 * (len(embeddings) - 1) * stacked[0].numel())
        gathered = gather_with_grad(stacked.transpose(0, 1).contiguous())  # (N, V, D), sample-major
        samples, num_views, width = gathered.shape
        index = (
            torch.arange(samples * num_views, device=gathered.device).view(samples, num_views).T.reshape(-1)
        )
        hinge, off_diagonal = slot_statistics(gathered.reshape(-1, width), index, samples)
        return _terms(inv, var_coeff * hinge.mean(), cov_coeff * off_diagonal.mean())


def _check_local_inputs(maps: list[Tensor], positions: list[Tensor], num_matches: tuple[int, int]) -> None:
    if len(maps) < 2 or len(maps) != len(positions):
        raise ValueError(
            f"local_loss needs ≥ 2 views and one positions tensor per view, got {len(maps)} and "
            f"{len(positions)}"
        )
    batch, _, channels = maps[0].shape
    for view, (features, where) in enumerate(zip(maps, positions, strict=True)):
        if features.ndim != 3 or features.shape[0] != batch or features.shape[2] != channels:
            raise ValueError(
                f"maps[{view}] has shape {tuple(features.shape)}, expected ({batch}, L, {channels})"
            )
        if where.shape != (batch, features.shape[1], 2):
            raise ValueError(
                f"positions[{view}] has shape {tuple(where.shape)}, expected "
                f"({batch}, {features.shape[1]}, 2) to match maps[{view}]"
            )
    if len(num_matches) != 2 or min(num_matches) < 1:
        raise UserError(f"num_matches must be two positive integers, got {num_matches}")
    sizes = [m.shape[1] for m in maps]
    if num_matches[0] > min(sizes[:2]) or num_matches[1] > min(sizes):
        raise UserError(
            f"num_matches {tuple(num_matches)} too large for views with {sizes} locations: the first must be "
            f"<= {min(sizes[:2])} (locations of each of the two first views), the second <= {min(sizes)} "
            "(locations of every view)"
        )


def local_loss(
    maps: list[Tensor],
    positions: list[Tensor],
    num_matches: tuple[int, int] = (20, 4),
    l2_all_matches: bool = False,
    inv_coeff: float = 25.0,
    var_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> LossTerms:
    """VICRegL local criterion on V ≥ 2 views of projected maps (B, L_v, C) with positions (B, L_v, 2).

    Matching, γ-best filtering, per-slot statistics and averaging exactly as the module docstring says.
    """
    _check_local_inputs(maps, positions, tuple(num_matches))
    with torch.autocast(maps[0].device.type, enabled=False):
        local = torch.cat([m.float() for m in maps], dim=1)  # (B, ΣL, C)
        batch, total_locations, channels = local.shape
        with torch.no_grad():
            x_index, y_index, slot_weight, calls = match_all(
                local,
                torch.cat([p.to(local.device) for p in positions], dim=1),
                [m.shape[1] for m in maps],
                tuple(num_matches),
                l2_all_matches,
            )
            rows = torch.arange(batch, device=local.device)[:, None] * total_locations

        flat = local.reshape(batch * total_locations, channels)
        squared_error = _PairedSquaredError.apply(
            flat, (rows + x_index).reshape(-1), (rows + y_index).reshape(-1)
        )
        inv = inv_coeff * (squared_error.view(batch, -1).sum(0) * slot_weight).sum() / (batch * channels)

        with torch.no_grad():
            gathered_index = gather_with_grad(torch.cat([x_index, y_index], dim=1))  # (N, 2S), no gradient
            columns, inverse = distinct_slots(calls, [m.shape[1] for m in maps], local.device)
            unique_slots = gathered_index.index_select(1, columns)  # (N, U)
            weight = torch.zeros(columns.shape[0], device=local.device).index_add_(
                0, inverse, torch.cat([slot_weight, slot_weight]) / 2
            )
            samples = gathered_index.shape[0]
            gathered_rows = torch.arange(samples, device=local.device)[None, :] * total_locations
            # (U · N,): sample n of slot u at u · N + n
            slot_rows = (gathered_rows + unique_slots.T).reshape(-1)
        gathered = gather_with_grad(local).reshape(samples * total_locations, channels)
        hinge, off_diagonal = slot_statistics(gathered, slot_rows, samples)
        return _terms(inv, var_coeff * (weight * hinge).sum(), cov_coeff * (weight * off_diagonal).sum())
