"""The sweep runner every evaluation goes through: one run folder per point, finished runs skipped, here in
sequence or one SLURM job per point (submitit), and the only writer of result.json and summary.json."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from vicregl_cli.errors import UserError
from vicregl_cli.files import check_writable_folder, write_json_atomic
from vicregl_cli.options import (
    MAX_REQUEUES,
    SIGNAL_DELAY_S,
    RunOptions,
    SlurmOptions,
    executor_parameters,
    make_executor,
)
from vicregl_cli.report import (
    RESULT_FILE,
    SUMMARY_FILE,
    best_record,
    default_metric,
    make_result,
    print_table,
    read_results,
)

if TYPE_CHECKING:
    from vicregl_cli.backbones.weights import WeightsRef

SAFE_NAME = re.compile(r"^[A-Za-z0-9._=+-]+$")
JOBS_FILE = "slurm_jobs.json"  # OUT/slurm_jobs.json: {point name: {job_id, cluster, logs, submitted}}
ACTIVE_STATES = frozenset(  # sacct states of a job that may still write its result.json
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
     "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT"}
)  # fmt: skip


@dataclass(frozen=True)
class SweepPoint:
    """One run of a protocol: `name` is its run folder, `params` its recorded hyper-parameters, `task`
    what `run_point` needs besides them (the protocol's checked config). A point with `members` computes
    several runs in one call (linear --cached: every learning rate's head at once); its run_point returns
    {member name: metrics}."""

    name: str
    protocol: str
    params: dict[str, Any]
    weights: WeightsRef | None = None
    dataset: str = ""
    task: Any = None
    folder: Path | None = None  # set by run_sweep: out / name
    members: tuple[SweepPoint, ...] = ()

    @property
    def runs(self) -> tuple[SweepPoint, ...]:
        """The runs this point records: its members, or itself."""
        return self.members or (self,)


RunPoint = Callable[[SweepPoint], dict]


def point_name(prefix: str, **values: float | str) -> str:
    """A run-folder name from a prefix and values, e.g. point_name("", lr=0.3) -> "lr=0.3"."""
    parts = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items()
    ]
    return "_".join([prefix, *parts]) if prefix else "_".join(parts)


VALUE_KINDS = {int: "an integer", float: "a number"}  # what parse_grid's error says a value must be


def parse_grid(tokens: Sequence[str] | None, option: str, cast: Callable[[str], float] = float) -> list:
    """Values of a swept option given as separate tokens and/or comma lists ("0.3 0.1", "0.3,0.1")."""
    values = []
    for token in tokens or []:
        for part in str(token).split(","):
            if not part.strip():
                continue
            try:
                values.append(cast(part.strip()))
            except ValueError:
                kind = VALUE_KINDS.get(cast, f"a {cast.__name__}")
                raise UserError(f"{option}: {part.strip()!r} is not {kind}") from None
    return values


def check_points(points: list[SweepPoint]) -> None:
    """At least one point, each run named once, every name usable as a folder name."""
    if not points:
        raise UserError("the sweep has no grid points; give at least one value for each swept option")
    names = [run.name for point in points for run in point.runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"the sweep repeats grid points {duplicates}; give each value once")
    unsafe = [name for name in names if not SAFE_NAME.match(name)]
    if unsafe:
        raise UserError(
            f"grid point names {unsafe} are not usable as folder names (letters, digits, ._=+- only)"
        )


def _is_main_process() -> bool:
    """Rank 0, or no process group. A group exists only if run_point imported torch.distributed, so a job
    whose run never needed torch does not import it here (each SLURM / local job is a fresh process)."""
    distributed = sys.modules.get("torch.distributed")
    return distributed is None or not distributed.is_initialized() or distributed.get_rank() == 0


def _record(run: SweepPoint, metrics: dict, wall_time_s: float) -> dict:
    record = make_result(run.protocol, run.weights, run.dataset, run.params, metrics, wall_time_s)
    return {"run": run.name, **record}


def execute_point(run_point: RunPoint, point: SweepPoint) -> list[dict]:
    """Run one point and write the result.json of each of its runs, and its final metrics as `metrics/<name>`
    TensorBoard scalars in RUN/tb (main process only): one sequential step or one SLURM job."""
    started = time.perf_counter()
    outcome = run_point(point)
    wall_time_s = time.perf_counter() - started
    per_run = outcome if point.members else {point.name: outcome}
    records = [_record(run, per_run[run.name], wall_time_s) for run in point.runs]
    if _is_main_process():
        from vicregl_cli.tensorboard import log_metrics  # torch + tensorboard: kept out of the sweep imports

        for run, record in zip(point.runs, records, strict=True):
            log_metrics(run.folder, record["metrics"])
            write_json_atomic(run.folder / RESULT_FILE, record)
    return records


@dataclass(frozen=True)
class PointJob:
    """What one SLURM job runs: a point. For a protocol whose run_point resumes from its run folder
    (`RESUMES = True`: detection), checkpoint() makes submitit requeue the same job on pre-emption or at the
    time limit (after the run saved its checkpoint on SIGUSR2); other points are not requeued."""

    run_point: RunPoint
    point: SweepPoint
    resumes: bool = False

    def __call__(self) -> list[dict]:
        return execute_point(self.run_point, self.point)

    def checkpoint(self) -> Any:
        if not self.resumes:
            return None
        import submitit  # optional: only --slurm submits PointJobs

        return submitit.helpers.DelayedSubmission(self)


def _placed(points: list[SweepPoint], out_dir: Path) -> list[SweepPoint]:
    """Each point and member with its run folder."""
    def place(point: SweepPoint) -> SweepPoint:
        members = tuple(place(member) for member in point.members)
        return dataclasses.replace(point, folder=out_dir / point.name, members=members)

    return [place(point) for point in points]


def _pending(points: list[SweepPoint]) -> list[SweepPoint]:
    """The points with a run lacking its result.json (a grouped point keeps only its unfinished members)."""
    pending = []
    for point in points:
        todo = tuple(run for run in point.runs if not (run.folder / RESULT_FILE).is_file())
        if todo and point.members:
            pending.append(dataclasses.replace(point, members=todo))
        elif todo:
            pending.append(point)
    return pending


def _job_records(out_dir: Path) -> dict[str, dict]:
    """OUT/slurm_jobs.json, or nothing yet."""
    file = out_dir / JOBS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _slurm_states(records: dict[str, dict]) -> dict[str, str]:
    """{job id: sacct state} of recorded SLURM jobs, from one sacct call (submitit's watcher); UNKNOWN when
    sacct no longer knows a job."""
    import submitit  # optional: records exist only where --slurm submitted

    jobs = [submitit.SlurmJob(folder=record["logs"], job_id=record["job_id"]) for record in records.values()]
    submitit.SlurmJob.watcher.update()
    return {job.job_id: job.watcher.get_state(job.job_id, mode="cache").split(" ")[0].upper() for job in jobs}


def _still_queued(out_dir: Path, pending: list[SweepPoint]) -> dict[str, str]:
    """{point name: 'job ID STATE'} of the pending points whose recorded SLURM job is still queued or
    running: a re-run must not submit (or run) them again."""
    recorded = _job_records(out_dir)
    records = {point.name: recorded[point.name] for point in pending
               if recorded.get(point.name, {}).get("cluster") == "slurm"}  # fmt: skip
    if not records:
        return {}
    states = _slurm_states(records)
    queued = {}
    for name, record in records.items():
        state = states[record["job_id"]]
        if state in ACTIVE_STATES:
            queued[name] = f"job {record['job_id']} {state}"
        elif state == "UNKNOWN":
            print(f"{name}: sacct does not know job {record['job_id']} any more: running it again",
                  file=sys.stderr)  # fmt: skip
    return queued


def _record_jobs(out_dir: Path, submitted: list[tuple[SweepPoint, Any]], slurm: SlurmOptions) -> None:
    """Add each submitted point's job to OUT/slurm_jobs.json (before waiting for any), for re-runs."""
    records = _job_records(out_dir)
    logs = str(slurm.folder or out_dir / "slurm" / "%j")
    for point, job in submitted:
        records[point.name] = {"job_id": str(job.job_id), "cluster": slurm.cluster, "logs": logs,
                               "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    write_json_atomic(out_dir / JOBS_FILE, records)


def run_sweep(
    points: list[SweepPoint],
    run_point: RunPoint,
    *,
    out_dir: Path,
    title: str,
    metric: str | None,
    options: RunOptions | None = None,
    resumes: bool = False,
) -> list[dict]:
    """Run every unfinished point (in order, or one submitit job each), then write summary.json and print
    the table with the best row (by `metric`) marked. Points whose SLURM job (recorded in OUT/slurm_jobs.json
    by an earlier run) is still queued or running are skipped. `--dry-run` prints the plan and runs nothing.
    Returns the records of every finished run, in the order of `points`."""
    options = options or RunOptions()
    check_points(points)
    out_dir = check_writable_folder(out_dir)
    points = _placed(points, out_dir)
    queued = _still_queued(out_dir, _pending(points))
    pending = [point for point in _pending(points) if point.name not in queued]
    if options.dry_run:
        print_plan(points, pending, title, options.slurm, out_dir, queued)
        return []
    finished = [run.name for point in points for run in point.runs if (run.folder / RESULT_FILE).is_file()]
    if finished:
        print(f"{title}: skipping {len(finished)} finished run(s): {finished}", file=sys.stderr)
    if queued:
        print(f"{title}: skipping {len(queued)} point(s) whose SLURM job is still queued or running "
              f"(re-run later to collect): {queued}", file=sys.stderr)  # fmt: skip
    failures: list[str] = []
    if options.slurm is None:
        for point in pending:
            execute_point(run_point, point)
    elif pending:
        failures = _run_on_slurm(out_dir, pending, run_point, options.slurm, title, resumes)
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_initialized():  # torchrun: rank 0 wrote every result
        distributed.barrier()
    files = [run.folder / RESULT_FILE for point in points for run in point.runs]
    records = [read_results([file])[0] for file in files if file.is_file()]
    if _is_main_process() and records:
        metric = metric or default_metric(records)
        best = best_record(records, metric)
        summary = {"title": title, "metric": metric, "best": best and best["run"], "runs": records}
        write_json_atomic(out_dir / SUMMARY_FILE, summary)
        print_table(records, metric, title)
    if failures:
        raise RuntimeError(f"{title}: {len(failures)} run(s) failed:\n" + "\n".join(failures))
    return records


def run_protocol(
    protocol: ModuleType, config: Any, weights: WeightsRef, out_dir: Path, options: RunOptions | None = None
) -> list[dict]:
    """Every evaluation's path: `protocol.plan(config, weights)` checks everything and returns the points,
    then run_sweep runs `protocol.run_point` on them, ranking by `protocol.METRIC` (SLURM jobs requeued
    when the protocol `RESUMES`). A bad `out_dir` is refused first, before the plan's notes."""
    check_writable_folder(out_dir)
    points = protocol.plan(config, weights)
    return run_sweep(
        points, protocol.run_point, out_dir=out_dir, title=points[0].protocol, metric=protocol.METRIC,
        options=options, resumes=getattr(protocol, "RESUMES", False),
    )  # fmt: skip


def _run_on_slurm(
    out_dir: Path, pending: list[SweepPoint], run_point: RunPoint, slurm: SlurmOptions, title: str,
    resumes: bool = False,
) -> list[str]:
    """Submit one job per pending point, wait for all; return a line per failed job (its error and logs).
    Resuming points get pretraining's requeue settings (SIGUSR2 ahead of the time limit, bounded requeues)."""
    requeue = {"max_requeues": MAX_REQUEUES, "slurm_signal_delay_s": SIGNAL_DELAY_S} if resumes else {}
    executor = make_executor(slurm, out_dir / "slurm" / "%j", title, **requeue)
    jobs = []
    with executor.batch():
        for point in pending:
            jobs.append(executor.submit(PointJob(run_point, point, resumes)))
    _record_jobs(out_dir, list(zip(pending, jobs, strict=True)), slurm)
    print(f"{title}: submitted {len(jobs)} job(s): {[job.job_id for job in jobs]}", file=sys.stderr)
    failures = []
    for point, job in zip(pending, jobs, strict=True):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - one failed job must not hide the others' results
            failures.append(f"  {point.name} (job {job.job_id}, logs {job.paths.stderr}): {error}")
    return failures


def print_plan(
    points: list[SweepPoint],
    pending: list[SweepPoint],
    title: str,
    slurm: SlurmOptions | None,
    out_dir: Path,
    queued: dict[str, str] | None = None,
) -> None:
    """`--dry-run`: the weights (with sha256), the dataset, every point with its params, what would be
    skipped (finished, or its SLURM job still queued), and the SLURM job that would be submitted per point.
    Writes and submits nothing."""
    queued = queued or {}
    console = Console() if Console().is_terminal else Console(width=200)
    runs = [run for point in points for run in point.runs]
    todo = {run.name for point in pending for run in point.runs}
    console.print(f"[bold]{title}[/bold] — dry run: {len(runs)} run(s), {len(todo)} to do, into {out_dir}")
    weights = runs[0].weights
    if weights is not None:
        console.print(
            f"weights: {weights.backbone}, {weights.path or 'random init'}, sha256 {weights.sha256 or '-'}, "
            f"options {weights.options or '{}'}, seed {weights.seed}",
            soft_wrap=True,
            markup=False,
        )
    console.print(f"dataset: {runs[0].dataset}")
    table = Table(show_lines=False)
    for column in ("run", "protocol", "status", "params"):
        table.add_column(column, overflow="fold")
    for point in points:
        for run in point.runs:
            params = " ".join(f"{key}={value}" for key, value in run.params.items())
            together = f" (with {len(point.members)} runs in one job)" if point.members else ""
            status = "to do" if run.name in todo else "finished (skipped)"
            if point.name in queued:
                status = f"{queued[point.name]} (skipped)"
            table.add_row(run.name, run.protocol, status + together, params)
    console.print(table)
    if slurm is not None:
        slurm.check()
        parameters = executor_parameters(slurm, title)
        console.print(
            f"would submit {len(pending)} SLURM job(s) ({slurm.cluster}), each: {parameters}",
            soft_wrap=True,
            markup=False,
        )
        console.print(f"  logs under {slurm.folder or out_dir / 'slurm' / '%j'}")
    console.print("dry run: nothing was trained, written or submitted")
