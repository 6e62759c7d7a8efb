"""The VICReg / VICRegL criteria against a plain-loop float64 reference (pairs, samples, slots)"""

from __future__ import annotations

import pytest
import torch

from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.losses import LossTerms, global_loss, local_loss, match_locations

COEFFS = (25.0, 25.0, 1.0)


def _vicreg_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of the local criterion: x, y (N, K, C); variance and covariance one slot at a time."""
    inv = COEFFS[0] * ((x - y) ** 2).mean()
    samples, slots, channels = x.shape
    off_diagonal = ~torch.eye(channels, dtype=torch.bool)
    var, cov = 0.0, 0.0
    for side in (x, y):
        for k in range(slots):
            column = side[:, k] - side[:, k].mean(dim=0)
            std = torch.sqrt(column.var(dim=0) + 1e-4)
            var = var + torch.relu(1 - std).mean() / slots / 2
            covariance = column.T @ column / (samples - 1)
            cov = cov + covariance[off_diagonal].pow(2).sum() / channels / slots / 2
    return inv, COEFFS[1] * var, COEFFS[2] * cov


def _matches(
    inputs: torch.Tensor, candidates: torch.Tensor, count: int | None
) -> tuple[list[int], list[int]]:
    """For one sample: nearest candidate of each input row (first on ties), the `count` closest inputs kept in
    input order (earlier input on ties)."""
    nearest, nearest_distance = [], []
    for row in inputs:
        distances = ((candidates - row) ** 2).sum(dim=1).sqrt().tolist()
        best = 0
        for m, value in enumerate(distances):
            if value < distances[best]:
                best = m
        nearest.append(best)
        nearest_distance.append(distances[best])
    count = len(nearest) if count is None else count
    kept = sorted(sorted(range(len(nearest)), key=lambda loc: (nearest_distance[loc], loc))[:count])
    return kept, [nearest[loc] for loc in kept]


def _direction(maps, positions, source, target, count, feature_based):
    xs, ys = [], []
    for b in range(maps[source].shape[0]):
        by = maps if feature_based else positions
        kept, matched = _matches(by[source][b], by[target][b], count)
        xs.append(maps[source][b, kept])
        ys.append(maps[target][b, matched])
    return _vicreg_terms(torch.stack(xs), torch.stack(ys))


def reference_local(maps, positions, num_matches=(20, 4), l2_all_matches=False) -> list[torch.Tensor]:
    pairs = [(i, j) for i in range(2) for j in range(len(maps)) if j != i]
    totals = [0.0, 0.0, 0.0]
    for i, j in pairs:
        for feature_based in (True, False):
            first = None if feature_based and l2_all_matches else num_matches[0]
            second = None if feature_based and l2_all_matches else num_matches[1]
            one = _direction(maps, positions, i, j, first, feature_based)
            two = _direction(maps, positions, j, i, second, feature_based)
            totals = [totals[t] + (one[t] + two[t]) / 2 for t in range(3)]
    return [total / len(pairs) for total in totals]


def reference_global(embeddings) -> list[torch.Tensor]:
    pairs = [(i, j) for i in range(2) for j in range(len(embeddings)) if j != i]
    inv = sum(((embeddings[i] - embeddings[j]) ** 2).mean() for i, j in pairs) / len(pairs)
    var, cov = 0.0, 0.0
    for e in embeddings:
        centred = e - e.mean(dim=0)
        var = var + torch.relu(1 - torch.sqrt(centred.var(dim=0) + 1e-4)).mean()
        covariance = centred.T @ centred / (e.shape[0] - 1)
        mask = ~torch.eye(e.shape[1], dtype=torch.bool)
        cov = cov + covariance[mask].pow(2).sum() / e.shape[1]
    return [COEFFS[0] * inv, COEFFS[1] * var / len(embeddings), COEFFS[2] * cov / len(embeddings)]


def _grid_positions(batch: int, grid: int, generator: torch.Generator) -> torch.Tensor:
    """Cell centres of random crop boxes in a 300 × 400 image, (B, grid², 2)."""
    size = torch.rand(batch, 2, generator=generator, dtype=torch.float64) * 0.6 + 0.3
    corner = torch.rand(batch, 2, generator=generator, dtype=torch.float64) * (1 - size)
    steps = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    rows = (corner[:, :1] + steps * size[:, :1]) * 300
    cols = (corner[:, 1:] + steps * size[:, 1:]) * 400
    return torch.stack(torch.broadcast_tensors(rows[:, :, None], cols[:, None, :]), dim=-1).reshape(
        batch, -1, 2
    )


def _inputs(batch: int, channels: int, grids: list[int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(batch, g * g, channels, generator=generator, dtype=torch.float64) + 0.3 for g in grids
    ]
    positions = [_grid_positions(batch, g, generator) for g in grids]
    return maps, positions


def _assert_terms(ours: LossTerms, reference: list[torch.Tensor], rtol: float = 1e-5) -> None:
    for name, value, expected in zip(("inv", "var", "cov"), ours[:3], reference, strict=True):
        assert value.dtype == torch.float32
        value, expected = float(value.detach()), float(expected.detach())
        assert abs(value - expected) <= rtol * abs(expected) + 1e-7, (name, value, expected)
    assert torch.allclose(ours.total, ours.inv + ours.var + ours.cov)


def _terms_and_grads(loss_fn, tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    terms = loss_fn(leaves)
    (terms.total if isinstance(terms, LossTerms) else sum(terms)).backward()
    return terms, [leaf.grad for leaf in leaves]


def _assert_grads(ours, reference, rtol=1e-5):
    for view, (got, expected) in enumerate(zip(ours, reference, strict=True)):
        scale = expected.abs().max()
        assert scale > 0, view
        assert (got.double() - expected).abs().max() <= rtol * scale, view


@pytest.mark.parametrize(
    ("grids", "batch", "channels", "l2_all_matches", "num_matches"),
    [
        ([7, 7], 4, 16, False, (20, 4)),  # Gram side (N < C)
        ([7, 7], 4, 16, True, (20, 4)),
        ([3, 3], 10, 4, False, (4, 2)),  # covariance side (N ≥ C)
        ([7, 7, 3, 3, 3, 3, 3, 3], 4, 16, False, (20, 4)),
        ([7, 7, 3, 3, 3, 3, 3, 3], 4, 16, True, (20, 4)),
    ],
)
def test_local_loss_equals_plain_reference(grids, batch, channels, l2_all_matches, num_matches):
    maps, positions = _inputs(batch, channels, grids)
    expected, expected_grads = _terms_and_grads(
        lambda ms: reference_local(ms, positions, num_matches, l2_all_matches), maps
    )
    ours, our_grads = _terms_and_grads(
        lambda ms: local_loss(ms, positions, num_matches, l2_all_matches), [m.float() for m in maps]
    )
    _assert_terms(ours, expected)
    _assert_grads(our_grads, expected_grads)


@pytest.mark.parametrize(("views", "batch", "width"), [(2, 6, 24), (8, 6, 24), (2, 12, 5)])
def test_global_loss_equals_plain_reference(views, batch, width):
    generator = torch.Generator().manual_seed(1)
    embeddings = [
        torch.randn(batch, width, generator=generator, dtype=torch.float64) * 0.7 + 1.0 for _ in range(views)
    ]
    expected, expected_grads = _terms_and_grads(reference_global, embeddings)
    ours, our_grads = _terms_and_grads(global_loss, [e.float() for e in embeddings])
    _assert_terms(ours, expected)
    _assert_grads(our_grads, expected_grads)


def test_hand_made_matches_keep_input_order_and_break_ties_forward():
    view0 = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]])  # a 2 × 2 grid
    view1 = torch.tensor([[0.0, 1.0], [2.0, 2.2], [5.0, 5.0], [9.0, 9.0]])
    distances = ((view0[:, None] - view1[None]) ** 2).sum(-1)[None]
    # nearest: 0 -> 0 (d 1), 1 -> 0 (d 1, tie with input 0), 2 -> 1 (d 2.2), 3 -> 1 (d 0.2); the two best are
    # input 3 then input 0 (the earlier of the tied pair), listed in input order.
    kept, matched = match_locations(distances, 2)
    assert kept.tolist() == [[0, 3]] and matched.tolist() == [[0, 1]]
    kept, matched = match_locations(distances.transpose(1, 2), 2)  # view1 -> view0: 0 -> 0 (tie 0/1), 1 -> 3
    assert kept.tolist() == [[0, 1]] and matched.tolist() == [[0, 3]]
    kept, matched = match_locations(distances, None)
    assert kept.tolist() == [[0, 1, 2, 3]] and matched.tolist() == [[0, 0, 1, 1]]

    # maps = positions: both matchings pick the pairs above. Per matching, pair (0, 1): 0->1 keeps 2 (squared
    # errors 1 + 0.04 over K·C = 4 -> 0.26), 1->0 keeps 1 (0.04 / 2 = 0.02): (0.26 + 0.02) / 2 = 0.14;
    # pair (1, 0) the same; the two matchings add: inv = 0.28. A second, shifted sample changes nothing.
    maps = [torch.stack([view, view + 10.0]) for view in (view0, view1)]
    terms = local_loss(maps, maps, num_matches=(2, 1), inv_coeff=1.0, var_coeff=0.0, cov_coeff=0.0)
    assert float(terms.inv) == pytest.approx(0.28, rel=1e-6)


def test_gradients_reach_every_view():
    maps, positions = _inputs(4, 8, [7, 7, 3, 3, 3, 3, 3, 3], seed=3)
    maps = [m.float().requires_grad_() for m in maps]
    local_loss(maps, positions).total.backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    embeddings = [torch.randn(4, 16, requires_grad=True) for _ in range(8)]
    global_loss(embeddings).total.backward()
    assert all(e.grad is not None and e.grad.abs().sum() > 0 for e in embeddings)


def test_half_precision_inputs_are_computed_in_float32():
    maps, positions = _inputs(4, 16, [3, 3], seed=4)
    half = [m.bfloat16() for m in maps]
    ours = local_loss(half, positions, num_matches=(4, 2))
    expected = local_loss([m.float() for m in half], positions, num_matches=(4, 2))
    assert ours.total.dtype == torch.float32
    assert torch.equal(ours.total, expected.total)


def test_bad_inputs_are_refused_before_work():
    maps, positions = _inputs(2, 4, [3, 3])
    with pytest.raises(UserError, match="num_matches"):
        local_loss([m.float() for m in maps], positions, num_matches=(10, 4))
    with pytest.raises(ValueError, match="positions"):
        local_loss([m.float() for m in maps], [p[:, :4] for p in positions])
    with pytest.raises(ValueError, match="2 views"):
        global_loss([torch.randn(4, 8)])
    with pytest.raises(UserError, match="2 samples"):
        global_loss([torch.randn(1, 8), torch.randn(1, 8)])


def test_chunked_statistics_equal_one_chunk(monkeypatch):
    """The CPU path splits slots into cache-sized chunks; tiny uneven chunks give the same values."""
    from vicregl_cli.pretrain import losses

    maps, positions = _inputs(4, 16, [3, 3, 2, 2], seed=5)
    whole, whole_grads = _terms_and_grads(
        lambda ms: local_loss(ms, positions, num_matches=(3, 2)), [m.float() for m in maps]
    )

    def tiny_chunks(total, row_width, device):
        return [slice(start, min(start + 3, total)) for start in range(0, total, 3)]

    monkeypatch.setattr(losses, "_chunks", tiny_chunks)
    chunked, chunked_grads = _terms_and_grads(
        lambda ms: local_loss(ms, positions, num_matches=(3, 2)), [m.float() for m in maps]
    )
    torch.testing.assert_close(torch.stack(list(chunked)), torch.stack(list(whole)), rtol=1e-6, atol=0)
    for got, expected in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
