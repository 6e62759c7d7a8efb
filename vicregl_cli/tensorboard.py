"""TensorBoard scalars of a run folder (RUN/tb/), written by the main process only: pretraining's logged
values and the evaluations' training curves and final metrics. A resumed run purges the steps it redoes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from torch.utils.tensorboard import SummaryWriter

from vicregl_cli.distributed import is_main_process

TB_DIR = "tb"  # RUN/tb/: beside stats.jsonl (pretraining) or result.json (evaluations)


class ScalarLog:
    """A SummaryWriter on `run_dir`/tb; with `enabled` False (other ranks) or no run folder: writes nothing.

    `purge_step`: events of earlier sessions at that step or later are dropped when TensorBoard reads the
    folder (torch's SummaryWriter purge_step), so a run resumed from a checkpoint shows each step once."""

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer: SummaryWriter | None = None
        if enabled and run_dir is not None:
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR), purge_step=purge_step)

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
