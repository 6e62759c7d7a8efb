"""The matching half of the VICRegL local criterion (losses.py): for every pair of views, matching and
direction, which locations the loss keeps and what they are matched with. One code path for the loss and for
`vicregl matches`, which draws exactly what the loss keeps. Semantics in the docstring of losses.py."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor


@functools.lru_cache(maxsize=256)
def device_indices(values: tuple[int, ...], device: torch.device) -> Tensor:
    """`values` as an index tensor on `device`, made once per content and device: inside a training step a
    copy from the host would wait for the device (DESIGN §5). Shared: callers must not modify it."""
    return torch.tensor(values, dtype=torch.long, device=device)


def match_locations(distances: Tensor, num_matches: int | None) -> tuple[Tensor, Tensor]:
    """Nearest candidate of each input location, then the γ-best: (kept inputs, their candidates), (..., K).

    `distances` is (..., L_in, L_cand). Kept indices are in the input's row-major order (not by distance);
    ties go to the earlier candidate and the earlier input location. `num_matches=None` keeps all L_in
    locations.
    """
    nearest = distances.argmin(dim=-1)
    locations = nearest.shape[-1]
    if num_matches is None or num_matches == locations:
        kept = torch.arange(locations, device=distances.device).expand_as(nearest)
    else:
        nearest_distance = distances.gather(-1, nearest.unsqueeze(-1)).squeeze(-1)
        kept = torch.argsort(nearest_distance, dim=-1, stable=True)[..., :num_matches].sort(dim=-1).values
    return kept, nearest.gather(-1, kept)


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """(B, La, C), (B, Lb, C) -> (B, La, Lb) squared L2 distances in float64 (exact differences if C <= 3)."""
    a, b = a.double(), b.double()
    if a.shape[-1] <= 3:
        return sum((a[:, :, None, c] - b[:, None, :, c]).square() for c in range(a.shape[-1]))
    squared_a = torch.linalg.vector_norm(a, dim=-1).square()[:, :, None]
    squared_b = torch.linalg.vector_norm(b, dim=-1).square()[:, None, :]
    return torch.baddbmm(squared_a + squared_b, a, b.transpose(1, 2), alpha=-2.0)


def _candidate_groups(sizes: list[int], source: int) -> list[tuple[int, int]]:
    """Views after `source` as runs (first view, count) of equal size; view 1 stays alone (pair (1, 0))."""
    groups: list[tuple[int, int]] = []
    for view in range(source + 1, len(sizes)):
        first, count = groups[-1] if groups else (None, 0)
        if first is not None and first != 1 and sizes[first] == sizes[view]:
            groups[-1] = (first, count + 1)
        else:
            groups.append((view, 1))
    return groups


class MatchCall(NamedTuple):
    """One call of the local criterion: pair (i, j), the matching, and the direction `source` -> `target`
    (the view whose locations are kept -> the view they are matched in); its K slots are columns
    `columns` of Matches.kept / Matches.matched."""

    pair: tuple[int, int]
    feature_based: bool
    source: int
    target: int
    columns: slice


class Matches(NamedTuple):
    """Every kept match of the local criterion: kept input locations (B, S) and their matches (B, S), both
    indices into the concatenated views' ΣL locations, each slot's weight (S,), and what each call kept."""

    kept: Tensor
    matched: Tensor
    slot_weight: Tensor
    calls: list[MatchCall]


def match_all(
    maps: Tensor, positions: Tensor, sizes: list[int], num_matches: tuple[int, int], l2_all_matches: bool
) -> Matches:
    """Every call (pair, matching, direction) of the local criterion on the concatenated views (B, ΣL, ·):
    the locations the loss keeps and their matches, with each slot's weight 1 / (2 · pairs · K). Candidate
    views of equal size are matched together. `local_loss` calls this; `vicregl matches` draws its result."""
    offsets = [sum(sizes[:view]) for view in range(len(sizes) + 1)]
    num_pairs = 2 * (len(sizes) - 1)
    batch = maps.shape[0]
    maps64 = maps.double()
    x_index, y_index, slot_weight, calls = [], [], [], []

    def add(
        distances: Tensor,
        kept_views: list[int],
        candidate_views: list[int],
        count: int | None,
        feature_based: bool,
        pair_of: tuple[int, int],
    ) -> None:
        """One call per (kept view, candidate view); `pair_of` (0, 1) names the pair (kept, candidate)."""
        kept, matched = match_locations(distances, count)  # (B, g, K)
        kept_offsets = device_indices(tuple(offsets[view] for view in kept_views), maps.device)
        candidate_offsets = device_indices(tuple(offsets[view] for view in candidate_views), maps.device)
        x_index.append((kept + kept_offsets[:, None]).reshape(batch, -1))
        y_index.append((matched + candidate_offsets[:, None]).reshape(batch, -1))
        slot_weight.append(maps.new_full((x_index[-1].shape[1],), 1.0 / (num_pairs * 2 * kept.shape[-1])))
        width, base = kept.shape[-1], sum(index.shape[1] for index in x_index[:-1])
        for member, views in enumerate(zip(kept_views, candidate_views, strict=True)):
            start = base + member * width  # member g of the group holds columns g·K .. (g + 1)·K
            pair = (views[pair_of[0]], views[pair_of[1]])
            calls.append(MatchCall(pair, feature_based, *views, slice(start, start + width)))

    for source in range(2):
        rows = slice(offsets[source], offsets[source + 1])
        for first, count in _candidate_groups(sizes, source):
            columns = slice(offsets[first], offsets[first + count])
            size = sizes[first]
            group, sources = list(range(first, first + count)), [source] * count
            for values, feature_based in ((maps64, True), (positions, False)):
                block = _squared_distances(values[:, rows], values[:, columns]).view(batch, -1, count, size)
                forward = block.permute(0, 2, 1, 3)  # (B, g, L_source, L_j): source -> each candidate view
                backward = block.permute(0, 2, 3, 1).contiguous()  # (B, g, L_j, L_source)
                counts = (None, None) if feature_based and l2_all_matches else num_matches
                # pair (source, j): source -> j keeps counts[0], j -> source keeps counts[1]
                add(forward, sources, group, counts[0], feature_based, (0, 1))
                add(backward, group, sources, counts[1], feature_based, (1, 0))
                if source == 0 and first == 1:  # pair (1, 0) from the same distances, the counts swapped
                    add(backward, group, sources, counts[0], feature_based, (0, 1))
                    add(forward, sources, group, counts[1], feature_based, (1, 0))
    return Matches(
        torch.cat(x_index, dim=1), torch.cat(y_index, dim=1), torch.cat(slot_weight).float(), calls
    )


def distinct_slots(calls: list[MatchCall], sizes: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """The columns of cat([kept, matched], dim=1) (B, 2S) that differ by construction (U,), and each column's
    position among them (2S,). A call that keeps every location of its source view keeps location k in its
    column k for every sample: those columns of all such calls are one slot per location (the statistics
    compute it once, weighted by its multiplicity). Decided from the shapes alone: nothing is read back from
    the device, and the index tensors are built once per shape."""
    spans = tuple((call.source, call.columns.start, call.columns.stop) for call in calls)
    return _distinct_slots(spans, tuple(sizes), device)


@functools.lru_cache(maxsize=64)
def _distinct_slots(
    spans: tuple[tuple[int, int, int], ...], sizes: tuple[int, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    offsets = [sum(sizes[:view]) for view in range(len(sizes))]
    keys: list[object] = list(range(2 * max(stop for _, _, stop in spans)))  # every column its own slot...
    for source, start, stop in spans:
        if stop - start == sizes[source]:  # ...but a whole view's column k is location k of the view
            keys[start:stop] = [("location", offsets[source] + k) for k in range(stop - start)]
    position: dict[object, int] = {}
    columns, inverse = [], []
    for column, key in enumerate(keys):
        if key not in position:
            position[key] = len(columns)
            columns.append(column)
        inverse.append(position[key])
    return device_indices(tuple(columns), device), device_indices(tuple(inverse), device)
