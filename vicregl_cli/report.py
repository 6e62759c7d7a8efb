"""The one results record every evaluation writes (result.json, through the sweep runner), and the tables
`report` and sweeps print."""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

import vicregl_cli
from vicregl_cli.errors import UserError

if TYPE_CHECKING:
    from vicregl_cli.backbones.weights import WeightsRef

RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
REQUIRED_FIELDS = (
    "run",
    "protocol",
    "backbone",
    "weights",
    "dataset",
    "params",
    "metrics",
    "wall_time_s",
    "versions",
)


def make_result(
    protocol: str,
    weights: WeightsRef | None,
    dataset: str,
    params: dict,
    metrics: dict[str, float],
    wall_time_s: float,
) -> dict:
    """A results record (every protocol the same keys); the weights entry names the file and its sha256."""
    return {
        "protocol": protocol,
        "backbone": None if weights is None else weights.backbone,
        "weights": {"path": None, "sha256": None, "seed": None} if weights is None else weights.record(),
        "dataset": str(dataset),
        "params": _jsonable(params),
        "metrics": {name: float(value) for name, value in metrics.items()},
        "wall_time_s": float(wall_time_s),
        "versions": {
            "vicregl": vicregl_cli.__version__,
            "torch": _version("torch"),
            "python": platform.python_version(),
        },
    }


def _version(package: str) -> str | None:
    """An installed package's version: the imported module's own (with its local tag, e.g. +cu130), else
    its metadata's (a run that never needed the package does not import it for the record)."""
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    """Paths and tuples into JSON-friendly strings and lists, recursively."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); rerun the evaluation that wrote it") from None


def _check_record(record: Any, source: Path) -> dict:
    if not isinstance(record, dict) or any(name not in record for name in REQUIRED_FIELDS):
        missing = [name for name in REQUIRED_FIELDS if not isinstance(record, dict) or name not in record]
        raise UserError(f"{source} is not a vicregl result record (missing {', '.join(missing)})")
    return record


def _records_in_file(path: Path) -> list[dict]:
    content = _load_json(path)
    if isinstance(content, dict) and "runs" in content:
        return [_check_record(record, path) for record in content["runs"]]
    return [_check_record(content, path)]


def read_results(paths: list[Path]) -> list[dict]:
    """Records from result.json / summary.json files, or from every result.json below the given folders."""
    records: list[dict] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist; give result.json / summary.json files or run folders")
        if path.is_dir():
            files = sorted(path.rglob(RESULT_FILE))
            if not files and (path / SUMMARY_FILE).is_file():
                files = [path / SUMMARY_FILE]
            if not files:
                raise UserError(
                    f"{path} holds no {RESULT_FILE} or {SUMMARY_FILE}; has any run finished there?"
                )
            for file in files:
                records.extend(_records_in_file(file))
        else:
            records.extend(_records_in_file(path))
    return records


def default_metric(records: list[dict]) -> str | None:
    """The first metric of the first record (top1, top1@<k>, mIoU, AP, ...): the one tables rank by."""
    for record in records:
        if record["metrics"]:
            return next(iter(record["metrics"]))
    return None


def best_record(records: list[dict], metric: str | None) -> dict | None:
    """The record with the highest `metric` (records without it are never best)."""
    candidates = [record for record in records if metric is not None and metric in record["metrics"]]
    if not candidates:
        return None
    return max(candidates, key=lambda record: record["metrics"][metric])


def _varying_params(records: list[dict]) -> list[str]:
    """Hyper-parameters whose value differs between records: the columns that tell the rows apart."""
    names: list[str] = []
    for record in records:
        names.extend(name for name in record["params"] if name not in names)
    sentinel = object()
    return [
        name
        for name in names
        if len({json.dumps(record["params"].get(name, sentinel), default=str) for record in records}) > 1
    ]


def _metric_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for record in records:
        names.extend(name for name in record["metrics"] if name not in names)
    return names


def weights_label(record: dict) -> str:
    """The weights of a record as tables and plots name them: file name and sha256 prefix, or random init."""
    weights = record["weights"]
    if weights.get("sha256") is None:
        seed = weights.get("seed")
        return f"{weights.get('path')}(seed={seed})" if seed is not None else str(weights.get("path"))
    return f"{Path(weights['path']).name} ({weights['sha256'][:8]})"


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(_format_value(item) for item in value)
    if isinstance(value, dict):
        return " ".join(f"{key}={_format_value(item)}" for key, item in value.items())
    return str(value)


IDENTITY_COLUMNS = ("protocol", "backbone", "weights", "dataset")


def _identity(record: dict) -> dict[str, str]:
    return {
        "protocol": record["protocol"],
        "backbone": str(record["backbone"] or "-"),
        "weights": weights_label(record),
        "dataset": record["dataset"],
    }


def table_rows(records: list[dict], metric: str | None) -> tuple[list[str], list[list[str]], int | None, str]:
    """(header, rows, index of the best row, caption) shared by the rich, markdown and CSV renderings.

    Identity columns (protocol, backbone, weights, dataset) shared by every row move to the caption."""
    identities = [_identity(record) for record in records]
    varying = [name for name in IDENTITY_COLUMNS if len({identity[name] for identity in identities}) > 1]
    shared = [identities[0][name] for name in IDENTITY_COLUMNS if name not in varying] if records else []
    params = _varying_params(records)
    metrics = _metric_names(records)
    header = ["run", *varying, *params, *metrics, "wall_time_s"]
    best = best_record(records, metric)
    rows = []
    for record, identity in zip(records, identities, strict=True):
        rows.append(
            [
                str(record.get("run", "-")),
                *(identity[name] for name in varying),
                *(_format_value(record["params"].get(name)) for name in params),
                *(_metric_format(record["metrics"].get(name)) for name in metrics),
                f"{record['wall_time_s']:.1f}",
            ]
        )
    best_index = next((index for index, record in enumerate(records) if record is best), None)
    return header, rows, best_index, " · ".join(shared)


def _metric_format(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def by_protocol(records: list[dict], metric: str | None) -> list[tuple[list[dict], str | None]]:
    """The records grouped by protocol (first-seen order), each group with the metric that ranks it:
    `metric` where that protocol reports it, else the group's first metric (one table / figure each)."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["protocol"], []).append(record)
    return [
        (group, metric if any(metric in record["metrics"] for record in group) else default_metric(group))
        for group in groups.values()
    ]


def grid_table(header: list[str], rows: list[list[str]], title: str, caption: str = "",
               best_index: int | None = None) -> Table:  # fmt: skip
    """A rich table of text rows (the first column and identity columns left-aligned, the others right); the
    row `best_index`, if any, is bold and marked with ★."""
    marked = best_index is not None
    table = Table(title=title, caption=caption or None)
    if marked:
        table.add_column("", no_wrap=True)
    for position, name in enumerate(header):
        table.add_column(name, justify="left" if position == 0 or name in IDENTITY_COLUMNS else "right")
    for index, row in enumerate(rows):
        is_best = index == best_index
        cells = ["★" if is_best else "", *row] if marked else row
        table.add_row(*cells, style="bold green" if is_best else None)
    return table


def rich_table(records: list[dict], metric: str | None, title: str) -> Table:
    """A rich table of one protocol's records; the best row (by `metric`) is bold and marked with ★."""
    header, rows, best_index, shared = table_rows(records, metric)
    caption = "\n".join(part for part in (shared, None if metric is None else f"★ best by {metric}") if part)
    return grid_table(header, rows, title, caption, best_index)


def print_tables(tables: list[Table], console: Console | None = None) -> None:
    """Print rich tables (to stdout unless a console is given; never squeezed off a TTY)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=240)
    for table in tables:
        console.print(table)


def print_table(records: list[dict], metric: str | None, title: str, console: Console | None = None) -> None:
    """Print the records as rich tables, one per protocol (the protocol joins the title when several)."""
    groups = by_protocol(records, metric)
    named = len(groups) > 1
    print_tables([rich_table(group, chosen, f"{title}: {group[0]['protocol']}" if named else title)
                  for group, chosen in groups], console)  # fmt: skip


def grid_markdown(header: list[str], rows: list[list[str]], best_index: int | None = None) -> list[str]:
    """The lines of a GitHub-markdown table; the cells of row `best_index` are bold."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for index, row in enumerate(rows):
        cells = [f"**{cell}**" for cell in row] if index == best_index else row
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def grid_csv(header: list[str], rows: list[list[str]]) -> str:
    """A CSV of text rows under `header`."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


def to_markdown(records: list[dict], metric: str | None) -> str:
    """GitHub-markdown tables, one per protocol (its shared identity columns in a line above); the best row's
    cells are bold."""
    sections = []
    for group, chosen in by_protocol(records, metric):
        header, rows, best_index, shared = table_rows(group, chosen)
        lines = [f"{shared}\n"] if shared else []
        sections.append("\n".join([*lines, *grid_markdown(header, rows, best_index)]) + "\n")
    return "\n".join(sections)


def to_csv(records: list[dict], metric: str | None) -> str:
    """CSV, one row per record: every identity column, the varying params, the metrics and a `best` flag (the
    best of each protocol, by `metric` where it reports it)."""
    params = _varying_params(records)
    metrics = _metric_names(records)
    best = [best_record(group, chosen) for group, chosen in by_protocol(records, metric)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *IDENTITY_COLUMNS, "weights_sha256", *params, *metrics, "wall_time_s", "best"])
    for record in records:
        identity = _identity(record)
        writer.writerow(
            [
                record.get("run", ""),
                *(identity[name] for name in IDENTITY_COLUMNS[:2]),
                record["weights"].get("path"),
                identity["dataset"],
                record["weights"].get("sha256") or "",
                *(json.dumps(record["params"].get(name)) for name in params),
                *(record["metrics"].get(name, "") for name in metrics),
                record["wall_time_s"],
                int(any(record is chosen for chosen in best)),
            ]
        )
    return buffer.getvalue()
