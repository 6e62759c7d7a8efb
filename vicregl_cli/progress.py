"""One progress display for every long loop: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
T = TypeVar("T")


@dataclass
class Tracker:
    """Advances a task and shows `fields` (loss, lr); off a TTY, prints a line every `log_every` steps. A
    field keeps its last value until a later step gives a new one (the training loop reads its loss from
    the device on logging steps only)."""

    description: str
    total: int
    log_every: int
    progress: Progress | None
    task_id: int | None = None
    completed: int = 0
    started: float = field(default_factory=time.perf_counter)
    fields: dict[str, float | str] = field(default_factory=dict)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, advancing one step after each (for loops run by another library's function)."""
        for item in items:
            yield item
            self.advance()

    def advance(self, steps: int = 1, **fields: float | str) -> None:
        self.completed += steps
        self.fields.update(fields)
        text = "  ".join(f"{key} {_format(value)}" for key, value in self.fields.items())
        if self.progress is not None:
            self.progress.update(self.task_id, advance=steps, fields=text)
            return
        if self.completed % self.log_every == 0 or self.completed == self.total:
            elapsed = time.perf_counter() - self.started
            rate = self.completed / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.completed) / rate if rate > 0 else float("nan")
            print(
                f"{self.description}: {self.completed}/{self.total}  {rate:.2f} it/s  eta {eta:.0f}s  {text}",
                file=sys.stderr,
                flush=True,
            )


def _format(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextmanager
def track(description: str, total: int, log_every: int = 50, enabled: bool = True) -> Iterator[Tracker]:
    """Yield a Tracker; `enabled=False` (e.g. non-zero ranks) shows nothing."""
    if not enabled:
        yield Tracker(description, total, log_every=max(total, 1) + 1, progress=None)
        return
    if not console.is_terminal:
        yield Tracker(description, total, log_every=max(1, log_every), progress=None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.percentage]{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[fields]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task_id = progress.add_task(description, total=total, fields="")
        yield Tracker(description, total, log_every=log_every, progress=progress, task_id=task_id)
