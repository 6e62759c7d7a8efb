"""TensorBoard scalars of a run folder (RUN/tb/), written by the main process only: pretraining's logged
values and the evaluations' training curves and final metrics. A resumed run purges the steps it redoes.

TensorBoard reads a folder's event files in name order, and a writer names its file by the wall-clock second,
host, pid and a per-process counter: two sessions in one second (a counter going from 9 to 10 sorts first) or
a resume on a node whose clock is behind would be read in the wrong order, and the redone steps would purge
the later ones. A resumed session therefore first renames the earlier sessions' files to sort first."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

from vicregl_cli.distributed import is_main_process

TB_DIR = "tb"  # RUN/tb/: beside stats.jsonl (pretraining) or result.json (evaluations)
EVENTS = "events.out.tfevents."  # the name TensorBoard's writer gives its files: EVENTS<%010d time>.<host>...
EARLIER = EVENTS + "0."  # an earlier session's file renamed: sorts before every writer's own name


def _first_wall_time(path: Path) -> float:
    """The wall time of a file's first event (its file-version record), inf for an empty file."""
    for event in EventFileLoader(str(path)).Load():
        return event.wall_time
    return float("inf")


def retire_earlier_sessions(folder: Path) -> None:
    """Rename the event files of earlier sessions in `folder` to EARLIER<number>.<old name>, numbered in the
    order they were written, so that TensorBoard reads them before the file of the session starting now."""
    numbered = len(list(folder.glob(EARLIER + "*")))
    recent = sorted((path for path in folder.glob(EVENTS + "*") if not path.name.startswith(EARLIER)),
                    key=lambda path: (_first_wall_time(path), path.name))
    for number, path in enumerate(recent, start=numbered):
        path.rename(folder / f"{EARLIER}{number:06d}.{path.name.removeprefix(EVENTS)}")


class ScalarLog:
    """A SummaryWriter on `run_dir`/tb; with `enabled` False (other ranks) or no run folder: writes nothing.

    `purge_step`: events of earlier sessions at that step or later are dropped when TensorBoard reads the
    folder (torch's SummaryWriter purge_step), so a run resumed from a checkpoint shows each step once; the
    earlier sessions' files are renamed first so that they are read before this one (module docstring)."""

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer: SummaryWriter | None = None
        if enabled and run_dir is not None:
            folder = Path(run_dir) / TB_DIR
            if purge_step is not None and folder.is_dir():
                retire_earlier_sessions(folder)
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def scalars(self, values: Mapping[str, object], step: int, prefix: str = "") -> None:
        """One scalar per numeric entry of `values` (not booleans), tagged prefix + key."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(prefix + key, float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def log_metrics(run_dir: Path | None, metrics: Mapping[str, float], step: int = 0) -> None:
    """An evaluation run's final metrics as `metrics/<name>` scalars in RUN/tb (main process only; nothing
    when the run has no folder, e.g. run_point called outside the sweep runner)."""
    with ScalarLog(run_dir, enabled=is_main_process()) as log:
        log.scalars(metrics, step, prefix="metrics/")
