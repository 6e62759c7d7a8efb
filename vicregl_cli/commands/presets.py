"""`vicregl presets`: the pretraining presets shipped inside the package, read from their files."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vicregl_cli.commands.app import app


@app.command(epilog="Example: vicregl presets")
def presets() -> None:
    """List the packaged pretraining presets (use one with `vicregl pretrain --config NAME`)."""
    from vicregl_cli.pretrain.config import load_config
    from vicregl_cli.pretrain.presets import preset_names

    table = Table(title="vicregl pretraining presets (vicregl pretrain --config NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("backbone", no_wrap=True)
    for column in ("alpha", "epochs", "batch", "optimizer", "views"):
        table.add_column(column, justify="right", no_wrap=True)
    for name in preset_names():
        config = load_config(name, {})
        views = " + ".join(
            f"{count}x{size}" for count, size in zip(config.crop_counts, config.crop_sizes, strict=True)
        )
        table.add_row(
            name, config.backbone, f"{config.alpha:g}", str(config.epochs), str(config.batch_size),
            config.optimizer, views,
        )  # fmt: skip
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # never squeezed off a TTY
