"""The `vicregl` command line: each subcommand parses its options, then calls one plain-Python module."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="VICRegL pretraining and the downstream evaluations of the VICReg / VICRegL papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _not_implemented(command: str) -> None:
    typer.echo(f"vicregl {command}: not implemented yet", err=True)
    raise typer.Exit(code=2)


@app.command()
def pretrain() -> None:
    """Pretrain a backbone with VICRegL (VICReg when alpha = 1)."""
    _not_implemented("pretrain")


@app.command()
def knn() -> None:
    """Weighted k-NN classification on frozen pooled features."""
    _not_implemented("knn")


@app.command()
def linear() -> None:
    """Linear probe on frozen features, with a learning-rate sweep."""
    _not_implemented("linear")


@app.command()
def semi() -> None:
    """Semi-supervised fine-tuning on 1 % or 10 % of the labels."""
    _not_implemented("semi")


@app.command()
def segment() -> None:
    """Semantic segmentation transfer (linear / FCN heads) on mmsegmentation."""
    _not_implemented("segment")


@app.command()
def detect() -> None:
    """Object detection transfer (Faster R-CNN C4) on detectron2 or the embedded torchvision engine."""
    _not_implemented("detect")


@app.command()
def synth(out: Path = typer.Option(..., help="Output folder")) -> None:
    """Write the synthetic dataset (ImageFolder + VOC layouts)."""
    _not_implemented("synth")


@app.command()
def backbones() -> None:
    """List the backbone registry."""
    _not_implemented("backbones")


@app.command()
def report() -> None:
    """Print or export the results of finished evaluation runs."""
    _not_implemented("report")


def main() -> None:
    """Console entry point: bad user input prints one clear line and exits 1, without a traceback."""
    from vicregl_cli.errors import UserError

    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
