"""The pretraining runs `report` reads: RUN/stats.jsonl files (given, or found below folders), their lines,
and the last logged value of every term, one column per run (a table of any number of terms stays narrow)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vicregl_cli.errors import UserError
from vicregl_cli.report import RESULT_FILE, SUMMARY_FILE

STATS_FILE = "stats.jsonl"
AXES = ("epoch", "step")  # stats.jsonl's position keys: the x axis of the curves, the first rows of the table


def split_inputs(paths: Sequence[Path]) -> tuple[list[Path], dict[str, Path]]:
    """(the paths that hold result records, {run label: stats.jsonl}) of `report`'s arguments: stats.jsonl
    files as given, or found below folders; a folder with neither is an error."""
    results: list[Path] = []
    stats: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist; give result / summary / stats files or run folders")
        if path.is_file():
            (stats if path.name == STATS_FILE else results).append(path)
            continue
        found = sorted(path.rglob(STATS_FILE))
        stats.extend(found)
        has_results = any(path.rglob(RESULT_FILE)) or (path / SUMMARY_FILE).is_file()
        if has_results:
            results.append(path)
        elif not found:
            raise UserError(f"{path} holds no {RESULT_FILE}, {SUMMARY_FILE} or {STATS_FILE}")
    names = [file.parent.name for file in stats]
    unique = len(set(names)) == len(names)
    return results, {(file.parent.name if unique else str(file.parent)): file for file in stats}


def read_stats(path: Path) -> list[dict]:
    """The lines of a stats.jsonl (a torn last line, from a run still writing, is skipped)."""
    lines = []
    for text in Path(path).read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def last_values(lines: list[dict]) -> dict[str, Any]:
    """Each key's value on the last line that logs it (the monitor's k-NN lines come every few epochs)."""
    values: dict[str, Any] = {}
    for line in lines:
        values.update(line)
    return values


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def stats_rows(stats: dict[str, Path]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the pretraining table: a row per logged term (epoch and step first, then the terms
    in first-logged order), a column per run, its last value ('-' where that run never logged it)."""
    runs = {label: last_values(read_stats(file)) for label, file in stats.items()}
    terms = [name for name in AXES if any(name in values for values in runs.values())]
    for values in runs.values():
        terms.extend(name for name in values if name not in terms)
    rows = [[term, *(_format(values[term]) if term in values else "-" for values in runs.values())]
            for term in terms]  # fmt: skip
    return ["last logged", *runs], rows
