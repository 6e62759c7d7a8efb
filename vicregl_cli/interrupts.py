"""Stopping a training run cleanly: signal handlers that only record SIGTERM / SIGUSR1 / SIGUSR2 so the loop
acts after its current step (save a checkpoint, hand the signal on to submitit's requeue hook), and the
exception that says so. Shared by pretraining and the torchvision detection engine."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # SIGUSR2: submitit's pre-emption signal


class TrainingInterrupted(Exception):
    """A stop signal arrived: the current step finished and RUN/checkpoint.pth was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved to {checkpoint}; "
            "run the same command again to resume"
        )
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class StopRequest:
    """Signal handlers that only record the signal; the loop acts on it after the current step."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def chain(self) -> None:
        """Hand the signal to the handler that was installed before (submitit's requeue hook, for one)."""
        handler = self.previous.get(self.signum)
        self.uninstall()
        if callable(handler):
            handler(self.signum, None)
