"""`vicregl matches`: the figure of the local criterion's matches on one image (docs/matches.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from vicregl_cli.commands.app import app
from vicregl_cli.errors import UserError


def _pair(text: str) -> tuple[int, int]:
    try:
        first, second = (int(part) for part in text.split(","))
    except ValueError as error:
        raise UserError(f"--pair {text!r}: give two view indices, e.g. 0,1") from error
    return first, second


@app.command(
    epilog="Example: vicregl matches --weights runs/r50/checkpoint.pth --image photo.jpg --out matches.png"
)
def matches(
    weights: Path = typer.Option(..., help="A pretraining RUN/checkpoint.pth (it holds the maps projector)"),
    image: Path = typer.Option(..., help="The seed image"),
    out: Path = typer.Option(..., help="The figure to write (.png, .pdf, .svg)"),
    seed: int = typer.Option(0, help="Seed of the multi-crop draw (crop boxes, flips, colours)"),
    pair: str = typer.Option("0,1", help="The pair of views i,j (i = 0 or 1, a large view; j any other)"),
) -> None:
    """Draw the feature- and location-based matches the VICRegL loss keeps for two views of an image."""
    from vicregl_cli.matches import compute_matches  # matplotlib and the model: loaded when the command runs
    from vicregl_cli.matches_figure import save_figure

    data = compute_matches(weights, image, seed, _pair(pair))
    path = save_figure(data, out)
    counts = ", ".join(f"{kind} {sum(len(d.kept) for d in found)}" for kind, found in data.matches.items())
    typer.echo(
        f"wrote {path}: views {data.pair[0]} and {data.pair[1]} of {image} (seed {seed}), matches {counts}"
    )
