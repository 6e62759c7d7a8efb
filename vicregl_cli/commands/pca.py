"""`vicregl pca`: principal-component maps of dense features, one column per backbone (docs/pca.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from vicregl_cli.commands.app import BACKBONE_HELP, WEIGHTS_HELP, app


@app.command(
    epilog="Example: vicregl pca --weights runs/r50/backbone.pth --weights random "
    "--out pca.png photo1.jpg photo2.jpg",
)
def pca(
    images: list[Path] = typer.Argument(..., help="The images, one row each"),
    weights: list[str] = typer.Option(..., help=f"{WEIGHTS_HELP}; repeat it for one column per backbone"),
    out: Path = typer.Option(..., help="The figure to write (.png)"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    stage: int = typer.Option(4, help="Backbone stage 1..4 whose map is drawn (4: the last)"),
    image_size: int = typer.Option(224, help="Input side: short side resized to it (bicubic), centre crop"),
    seed: int = typer.Option(0, help="Seed of a random init (--weights random)"),
) -> None:
    """Draw the 3 principal components of the images' dense features as RGB, foreground only (DINOv2)."""
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.pca_maps import PcaSettings, run_pca  # scikit-learn: loaded when the command runs

    refs = [resolve_weights(entry, backbone, seed) for entry in weights]
    settings = PcaSettings(images=tuple(images), out=out, stage=stage, image_size=image_size)
    path = run_pca(settings, refs)
    typer.echo(f"wrote {path}: {len(images)} images x {len(refs)} backbones, stage {stage}, {image_size} px")
