"""`vicregl synth`, `backbones` and `report`: the synthetic dataset, the registry table, result tables."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vicregl_cli.commands.app import app
from vicregl_cli.errors import UserError
from vicregl_cli.report import (
    grid_csv,
    grid_markdown,
    grid_table,
    print_table,
    print_tables,
    read_results,
    to_csv,
    to_markdown,
)
from vicregl_cli.training_stats import split_inputs, stats_rows


@app.command(epilog="Example: vicregl synth --out data/synth --num-train 800 --num-val 200")
def synth(
    out: Path = typer.Option(..., help="Output folder (gets classification/ and VOC2012/)"),
    num_train: int = typer.Option(8000, help="Training images (each written to both layouts)"),
    num_val: int = typer.Option(2000, help="Validation images"),
    image_size: int = typer.Option(96, help="Image side in pixels"),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same bytes"),
    workers: int = typer.Option(2, help="Processes drawing images (the output does not depend on it)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the arguments, print what would be written"),
) -> None:
    """Write the synthetic dataset (ImageFolder + VOC layouts)."""
    from vicregl_cli.data.synthetic import check_arguments, generate

    if dry_run:
        check_arguments(out, num_train, num_val, image_size, workers)
        typer.echo(f"would write {num_train} + {num_val} images of {image_size}x{image_size} (seed {seed})"
                   f" to {out}/classification and {out}/VOC2012; dry run: nothing was written")
        return
    generate(out, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, workers=workers)
    typer.echo(f"wrote {num_train} + {num_val} images of {image_size}x{image_size} to {out}")


@app.command(epilog="Example: vicregl backbones")
def backbones() -> None:
    """List the backbone registry: parameters (no classifier), representation size, stage widths."""
    from vicregl_cli.backbones import BACKBONES, parameter_count

    table = Table(title="vicregl backbones (parameters without classifier)")
    table.add_column("name", no_wrap=True)
    for column in ("parameters", "representation", "stage widths", "output stride"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, spec in BACKBONES.items():
        widths = "-".join(str(width) for width in spec.stage_widths)
        table.add_row(
            name, f"{parameter_count(name) / 1e6:.2f} M", str(spec.representation_size), widths,
            str(spec.output_stride),
        )  # fmt: skip
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # never squeezed off a TTY


STATS_TITLE = "stats.jsonl"  # a short title: rich wraps a title to the width of its table


@app.command(epilog="Example: vicregl report runs/r50-knn runs/r50-linear --format md")
def report(
    paths: list[Path] = typer.Argument(..., help="result / summary / stats.jsonl files, or folders"),
    format: str = typer.Option("table", "--format", help="table (rich), md (markdown) or csv"),
    metric: str = typer.Option(None, help="Metric that picks the best row (default: each protocol's first)"),
    title: str = typer.Option("results", help="Table title"),
    output: Path = typer.Option(None, help="Write md / csv here instead of printing it"),
    plots: Path = typer.Option(None, "--plots", help="Also write PNG figures into this folder: training "
                               "curves of every stats.jsonl found, metric against lr per swept protocol"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read the records, print what would be shown"),
) -> None:
    """Print or export the results of finished runs: a table per evaluation protocol (the best row marked)
    and the last logged values of pretraining runs (stats.jsonl); --plots DIR: figures."""
    if format not in ("table", "md", "csv"):
        raise UserError(f"--format must be table, md or csv, got {format!r}")
    paths, stats = split_inputs(paths)
    records = read_results(paths) if paths else []
    if dry_run:
        figures = f"; figures of {len(stats)} stats.jsonl file(s) and sweeps into {plots}" if plots else ""
        ranking = metric or "each protocol's first metric"
        into = f" into {output}" if output else ""
        typer.echo(f"would show {len(records)} record(s) ranked by {ranking} and {len(stats)} stats.jsonl "
                   f"file(s) as {format}{into}{figures}; dry run: nothing was written")  # fmt: skip
        return
    if plots is not None:
        from vicregl_cli.plots import write_plots  # matplotlib: only when figures are asked for

        for figure in write_plots(records, stats, metric, plots):
            typer.echo(f"wrote {figure}", err=True)
    stats_table = stats_rows(stats) if stats else None
    if format == "table":
        tables = [grid_table(*stats_table, STATS_TITLE)] if stats_table else []
        if records:
            print_table(records, metric, title)
        print_tables(tables)
        return
    if format == "md":
        sections = [to_markdown(records, metric)] if records else []
        if stats_table:
            sections.append("\n".join([f"{STATS_TITLE}\n", *grid_markdown(*stats_table)]) + "\n")
        text = "\n".join(sections)
    elif records:
        text = to_csv(records, metric)
        if stats_table:
            typer.echo("stats.jsonl files are shown by --format table or md, not in the CSV", err=True)
    else:
        text = grid_csv(*stats_table) if stats_table else ""
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
