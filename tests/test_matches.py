"""vicregl matches: the figure draws exactly the matches the local criterion keeps for the same views."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vicregl_cli.commands.export  # noqa: F401 - with matches: two commands, so the app is a group
import vicregl_cli.commands.matches  # noqa: F401 - registers `matches` on the app
from vicregl_cli.backbones import save_backbone
from vicregl_cli.commands.app import app
from vicregl_cli.data.multicrop import grid_positions
from vicregl_cli.errors import UserError
from vicregl_cli.matches import compute_matches, draw_views, load_pretraining_model, read_image
from vicregl_cli.matches_figure import GAP, draw_figure, save_figure
from vicregl_cli.pretrain import losses

NUM_MATCHES = (6, 3)  # of 4 x 4 = 16 large-view and 2 x 2 = 4 small-view locations


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step VICRegL run (resnet10_small_w16, 2 x 32 px + 2 x 16 px views) and a synthetic scene."""
    from vicregl_cli.data.synthetic import generate
    from vicregl_cli.pretrain.config import load_config
    from vicregl_cli.pretrain.loop import train

    root = tmp_path_factory.mktemp("matches")
    generate(root / "synth", num_train=16, num_val=12, image_size=48, seed=0, workers=1)
    config = load_config(None, dict(
        data=str(root / "synth/classification/train"), out=str(root / "run"), backbone="resnet10_small_w16",
        mlp="32-32", maps_mlp="16-16", alpha=0.75, num_matches=list(NUM_MATCHES), crop_sizes=[32, 16],
        crop_counts=[2, 2], crop_min_scales=[0.3, 0.1], crop_max_scales=[1.0, 0.3], optimizer="adamw",
        base_lr=0.01, weight_decay=0.05, epochs=1, warmup_epochs=0, batch_size=8, precision="fp32",
        num_workers=0, seed=0, log_every=1, probe=True,
    ))  # fmt: skip
    train(config, device="cpu", command_line=["test"])
    return root / "run" / "checkpoint.pth", root / "synth/VOC2012/JPEGImages/val_000000.jpg"


def _loss_matches(checkpoint: Path, image: Path, seed: int) -> list:
    """The matches `local_loss` keeps when the training forward runs on the views of (image, seed): what
    match_all returns inside the loss (the batch holds the sample twice: the variance needs 2 samples)."""
    model, config = load_pretraining_model(checkpoint)
    sample, _ = draw_views(read_image(image), config, seed)
    recorded = []

    def recording(*args, **kwargs):
        recorded.append(original(*args, **kwargs))
        return recorded[-1]

    original = losses.match_all
    losses.match_all = recording
    try:
        with torch.no_grad():
            views = [torch.stack([v, v]) for v in sample.views]
            model(views, [torch.stack([p, p]) for p in sample.positions])
    finally:
        losses.match_all = original
    (result,) = recorded
    sizes = [p.shape[0] for p in sample.positions]
    offsets = [sum(sizes[:view]) for view in range(len(sizes))]
    return [
        ("feature" if call.feature_based else "location", call.source, call.target,
         (result.kept[0, call.columns] - offsets[call.source]).tolist(),
         (result.matched[0, call.columns] - offsets[call.target]).tolist())
        for call in result.calls
        if call.pair == (0, 1)
    ]  # fmt: skip


def _drawn_matches(figure, data) -> list:
    """Invert the drawing: each line's end points -> (kind, source, target, kept cell, matched cell)."""
    side = data.crops[0].shape[-1]
    left_edges = {data.pair[0]: 0.0, data.pair[1]: side + round(GAP * side)}
    drawn = []
    for axes in figure.axes:
        for line in axes.lines:
            kind, views = line.get_gid().split(":")
            source, target = (int(v) for v in views.split("->"))
            cells = []
            for view, x, y in zip((source, target), line.get_xdata(), line.get_ydata(), strict=True):
                grid = data.grids[data.pair.index(view)]
                step = data.crops[data.pair.index(view)].shape[-1] / grid
                cells.append(int(y // step) * grid + int((x - left_edges[view]) // step))
            drawn.append((kind, source, target, *cells))
    return drawn


def _reference_kept(values_a: torch.Tensor, values_b: torch.Tensor, count: int) -> list[tuple[int, int]]:
    """Plain loops: each location of a takes its nearest of b (first on ties); the `count` with the smallest
    distance (earlier location on ties), listed in a's row-major order."""
    nearest = []
    for index, a in enumerate(values_a.double().tolist()):
        distances = [math.dist(a, b) for b in values_b.double().tolist()]
        best = min(range(len(distances)), key=lambda j: (distances[j], j))
        nearest.append((distances[best], index, best))
    return sorted((index, best) for _, index, best in sorted(nearest)[:count])


def test_drawn_matches_are_exactly_the_ones_the_loss_keeps(run):
    checkpoint, image = run
    data = compute_matches(checkpoint, image, seed=3, pair=(0, 1))
    drawn = _drawn_matches(draw_figure(data), data)
    kept_by_loss = [
        (kind, source, target, kept, matched)
        for kind, source, target, kept_cells, matched_cells in _loss_matches(checkpoint, image, seed=3)
        for kept, matched in zip(kept_cells, matched_cells, strict=True)
    ]
    assert sorted(drawn) == sorted(kept_by_loss)
    per_direction = {(k, s, t): sum(1 for d in drawn if d[:3] == (k, s, t)) for k, s, t, *_ in drawn}
    assert per_direction == {("feature", 0, 1): 6, ("feature", 1, 0): 3, ("location", 0, 1): 6,
                             ("location", 1, 0): 3}  # fmt: skip

    # An independent reference from the model's own maps and the multi-crop's positions.
    model, config = load_pretraining_model(checkpoint)
    sample, _ = draw_views(read_image(image), config, seed=3)
    with torch.no_grad():
        maps = [model.maps_projector(model.backbone(v[None])[0].flatten(2)[0].T) for v in sample.views[:2]]
    for kind, values in (("feature", maps), ("location", sample.positions[:2])):
        for source, target, count in ((0, 1, NUM_MATCHES[0]), (1, 0, NUM_MATCHES[1])):
            expected = _reference_kept(values[source], values[target], count)
            assert sorted(d[3:] for d in drawn if d[:3] == (kind, source, target)) == expected, (kind, source)


def test_crop_boxes_are_those_whose_positions_the_loss_matches(run):
    checkpoint, image = run
    data = compute_matches(checkpoint, image, seed=5, pair=(1, 2))
    model, config = load_pretraining_model(checkpoint)
    sample, _ = draw_views(read_image(image), config, seed=5)
    for view, box, flipped, grid in zip(data.pair, data.boxes, data.flipped, data.grids, strict=True):
        positions = grid_positions([list(box)], grid, [flipped])[0]
        assert torch.equal(positions, sample.positions[view])
    assert data.grids == (4, 2) and [c.shape for c in data.crops] == [(3, 32, 32), (3, 16, 16)]


def test_cli_writes_the_figure_and_refuses_backbone_only_files(run, tmp_path):
    checkpoint, image = run
    out = tmp_path / "figures" / "matches.png"
    result = CliRunner().invoke(app, ["matches", "--weights", str(checkpoint), "--image", str(image),
                                      "--seed", "1", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    backbone_only = tmp_path / "backbone.pth"
    model, _ = load_pretraining_model(checkpoint)
    save_backbone(backbone_only, "resnet10_small_w16", model.backbone.state_dict())
    with pytest.raises(UserError, match="checkpoint.pth"):
        compute_matches(backbone_only, image, seed=0, pair=(0, 1))
    with pytest.raises(UserError, match="--pair 2,3"):
        compute_matches(checkpoint, image, seed=0, pair=(2, 3))
    with pytest.raises(UserError, match="cannot read image"):
        compute_matches(checkpoint, tmp_path / "missing.png", seed=0, pair=(0, 1))
    svg = save_figure(compute_matches(checkpoint, image, 0, (0, 3)), tmp_path / "small_view.svg")
    assert "<svg" in svg.read_text()[:500]
