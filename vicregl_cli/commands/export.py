"""`vicregl export`: a backbone's weights in the layout another code base loads with its own loader."""

from __future__ import annotations

from pathlib import Path

import typer

from vicregl_cli.commands.app import BACKBONE_HELP, WEIGHTS_HELP, app
from vicregl_cli.errors import UserError
from vicregl_cli.protocol_defaults import EXPORT_TARGETS


@app.command(
    epilog="Example: vicregl export --weights runs/r50/backbone.pth --to torchvision "
    "--out r50_torchvision.pth",
)
def export(
    out_file: Path = typer.Argument(
        None, metavar="OUT", help="The file to write, as --out (kept for scripts)", show_default=False
    ),
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    out: Path = typer.Option(None, help="The file to write (.pth; .pkl for detectron2)"),
    to: str = typer.Option(..., "--to", help=f"Target layout: {', '.join(EXPORT_TARGETS)}"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    seed: int = typer.Option(0, help="Random init seed (--weights random)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the weights and the target, write nothing"),
) -> None:
    """Write a backbone for torchvision, timm, mmseg, detectron2 or the official VICRegL code."""
    if (out is None) == (out_file is None):
        raise UserError("give the file to write once: --out FILE (or as the last argument)")
    out = out or out_file
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.export import check_out_file, check_target, export_weights

    check_target(to, backbone)  # a wrong --to or OUT fails before the weights file is read
    check_out_file(out, to)
    resolved = resolve_weights(weights, backbone, seed)
    check_target(to, resolved.backbone)
    if dry_run:
        typer.echo(
            f"would write {resolved.backbone} ({resolved.label}) as {to} to {out}; dry run: nothing written"
        )
        return
    exported = export_weights(resolved, to, out)
    typer.echo(f"wrote {exported.path} ({exported.num_tensors} tensors, {to} layout of {resolved.backbone})")
    typer.echo(f"load: {exported.loader.replace('PATH', repr(str(exported.path)))}")
