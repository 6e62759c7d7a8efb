"""Stopping a training run cleanly: signal handlers that only record SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT so
the loop acts after its current step (save a checkpoint, hand the signal on to submitit's requeue hook), and
the exception that says so. A second Ctrl-C raises KeyboardInterrupt at once. Loader workers ignore these
signals (`ignore_stop_signals`): SLURM, torchrun and a terminal signal a whole process group, and the main
process alone decides when to stop. Shared by pretraining and the torchvision detection engine."""

from __future__ import annotations

import os
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

# SIGUSR2: submitit's pre-emption signal; SIGINT: Ctrl-C (the second one stops at once)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def resume_command(argv: list[str]) -> str:
    """What to run to resume: the same command (`vicregl ARGS`), or the same launcher line under torchrun /
    srun (this process cannot see that line)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "the same torchrun command"
    step = os.environ.get("SLURM_STEP_ID", "")
    if step.isdigit() and int(step) < 0xFFFFFFF0:  # started by srun (not the batch / extern step)
        return "the same srun command (or sbatch script)"
    return shlex.join(["vicregl", *argv[1:]])


class TrainingInterrupted(Exception):
    """A stop signal arrived: the current step finished and RUN/checkpoint.pth was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path, command: str = "") -> None:
        how = f"run {command} to resume" if command else "run the same command again to resume"
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; checkpoint saved to {checkpoint}; {how}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: this worker ignores the stop signals meant for the job (torch's own
    SIGTERM handler would kill it, Python's SIGINT one end its loop). A SIGTERM from its main process
    (multiprocessing's terminate at exit) still ends it: a thread waits for SIGTERM, blocked everywhere else,
    and reads who sent it."""
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
    threading.Thread(target=_exit_on_sigterm_from_parent, name="sigterm-from-parent", daemon=True).start()


def _exit_on_sigterm_from_parent() -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)


class StopRequest:
    """Signal handlers that only record the signal; the loop acts on it after the current step. A Ctrl-C
    puts the previous SIGINT handler back, so that a second one stops at once (KeyboardInterrupt); SIGINT is
    left alone where it was ignored (a background job)."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
                continue
            self.previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signum, self.previous[signum])

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def chain(self) -> None:
        """Hand the signal to the handler that was installed before (submitit's requeue hook, for one); not
        Python's Ctrl-C handler, whose KeyboardInterrupt would hide the saved checkpoint."""
        handler = self.previous.get(self.signum)
        self.uninstall()
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.signum, None)
