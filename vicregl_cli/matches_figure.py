"""The figure of `vicregl matches`: the seed image with the two crop boxes, then for the feature-based and
the location-based matching the two crops side by side with one line per kept match, from the kept cell's
centre to its match's, each direction in its own colour. A bare matplotlib Figure (no pyplot: no GUI
backend, no global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vicregl_cli.files import write_atomic
from vicregl_cli.matches import PairMatches

GAP = 0.25  # blank space between the two crops, as a fraction of the first crop's side
VIEW_COLOURS = ("tab:orange", "tab:cyan")  # box of view i / view j; lines i -> j / j -> i
TITLES = {"feature": "feature-based matching", "location": "location-based matching"}


def cell_centre(index: int, grid: int, side: int, x_offset: float) -> tuple[float, float]:
    """(x, y) in display pixels of row-major cell `index` of a grid × grid map over a side × side crop drawn
    with its left edge at `x_offset`."""
    row, column = divmod(index, grid)
    step = side / grid
    return x_offset + (column + 0.5) * step, (row + 0.5) * step


def side_by_side(data: PairMatches) -> tuple[np.ndarray, tuple[float, float]]:
    """Both crops on one white canvas (H × W × 3 uint8), and the x offset of each crop's left edge."""
    first, second = (crop.permute(1, 2, 0).numpy() for crop in data.crops)
    gap = round(GAP * first.shape[1])
    height = max(first.shape[0], second.shape[0])
    canvas = np.full((height, first.shape[1] + gap + second.shape[1], 3), 255, dtype=np.uint8)
    canvas[: first.shape[0], : first.shape[1]] = first
    canvas[: second.shape[0], first.shape[1] + gap :] = second
    return canvas, (0.0, float(first.shape[1] + gap))


def _draw_boxes(axes: Axes, data: PairMatches) -> None:
    axes.imshow(data.image.permute(1, 2, 0).numpy())
    for view, box, flipped, colour in zip(data.pair, data.boxes, data.flipped, VIEW_COLOURS, strict=True):
        label = f"view {view}" + (" (flipped)" if flipped else "")
        frame = Rectangle(
            (box.left - 0.5, box.top - 0.5),
            box.width,
            box.height,
            fill=False,
            lw=2,
            edgecolor=colour,
            linestyle="--" if flipped else "-",
            label=label,
        )
        axes.add_patch(frame)
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(f"image and crop boxes (pair {data.pair[0]}, {data.pair[1]})")


def _draw_matches(axes: Axes, data: PairMatches, kind: str) -> None:
    canvas, offsets = side_by_side(data)
    axes.imshow(canvas)
    where = {
        view: (grid, crop.shape[-1], offset)
        for view, grid, crop, offset in zip(data.pair, data.grids, data.crops, offsets, strict=True)
    }
    counts = []
    for direction in data.matches[kind]:
        colour = VIEW_COLOURS[data.pair.index(direction.source)]
        for kept, matched in zip(direction.kept, direction.matched, strict=True):
            start = cell_centre(kept, *where[direction.source])
            end = cell_centre(matched, *where[direction.target])
            line = axes.plot([start[0], end[0]], [start[1], end[1]], color=colour, lw=1.2, marker="o", ms=3)[
                0
            ]
            line.set_gid(f"{kind}:{direction.source}->{direction.target}")
        counts.append(f"{direction.source}→{direction.target}: {len(direction.kept)}")
    axes.set_title(f"{TITLES[kind]} ({', '.join(counts)} kept)")


def draw_figure(data: PairMatches) -> Figure:
    """The three panels: crop boxes on the image, feature-based matches, location-based matches."""
    figure = Figure(figsize=(16, 5.5), layout="constrained")
    boxes, features, locations = figure.subplots(1, 3)
    _draw_boxes(boxes, data)
    _draw_matches(features, data, "feature")
    _draw_matches(locations, data, "location")
    for axes in (boxes, features, locations):
        axes.set_axis_off()
    return figure


def save_figure(data: PairMatches, out: str | Path, dpi: int = 150) -> Path:
    """Draw the figure and write it to `out` (format from the suffix: png, pdf, svg...) atomically."""
    figure = draw_figure(data)
    suffix = Path(out).suffix.lstrip(".") or "png"
    options = dict(dpi=dpi, format=suffix, bbox_inches="tight")  # tight: titles are never clipped
    return write_atomic(out, lambda temporary: figure.savefig(temporary, **options))
