"""The hyper-parameter sweep runner shared by linear, semi, segment and detect: one run folder per grid point,
finished runs skipped, here in sequence or as one SLURM job per point through submitit."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vicregl_cli.errors import UserError
from vicregl_cli.report import RESULT_FILE, print_table, read_results, write_result, write_summary

SAFE_NAME = re.compile(r"^[A-Za-z0-9._=+-]+$")


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: `name` is its run folder below the sweep folder, `params` what run_point needs."""

    name: str
    params: dict


@dataclass
class SlurmOptions:
    """How each grid point runs as its own SLURM job (`cluster="local"`: as local processes, for tests)."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int = 10
    mem_gb: int | None = None
    time_min: int = 24 * 60
    folder: Path | None = None
    cluster: str = "slurm"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional: dict = field(default_factory=dict)


RunPoint = Callable[[SweepPoint, Path], dict]


def point_name(prefix: str, **values: float | str) -> str:
    """A run-folder name from a prefix and values, e.g. point_name("lr", lr=0.3) -> "lr=0.3"."""
    parts = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items()
    ]
    return "_".join([prefix, *parts]) if prefix else "_".join(parts)


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
                raise UserError(f"{option}: {part.strip()!r} is not a {cast.__name__}") from None
    return values


def _check_points(points: list[SweepPoint]) -> None:
    if not points:
        raise UserError("the sweep has no grid points; give at least one value for each swept option")
    names = [point.name for point in points]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"the sweep repeats grid points {duplicates}; give each value once")
    unsafe = [name for name in names if not SAFE_NAME.match(name)]
    if unsafe:
        raise UserError(
            f"grid point names {unsafe} are not usable as folder names (letters, digits, ._=+- only)"
        )


def run_and_write(run_point: RunPoint, point: SweepPoint, run_dir: Path) -> dict:
    """Run one point and write its result.json (main process only): one sequential step or SLURM job."""
    record = dict(run_point(point, run_dir))
    record["run"] = point.name
    if _is_main_process():
        write_result(run_dir, record)
    return record


def _is_main_process() -> bool:
    """Rank 0, or no process group. A group exists only if run_point imported torch.distributed, so a job
    whose run never needed torch does not import it here (each SLURM / local job is a fresh process)."""
    distributed = sys.modules.get("torch.distributed")
    return distributed is None or not distributed.is_initialized() or distributed.get_rank() == 0


def _executor(options: SlurmOptions, out_dir: Path, title: str):
    import submitit

    folder = options.folder if options.folder is not None else out_dir / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    tasks = options.tasks_per_node if options.tasks_per_node is not None else max(1, options.gpus_per_node)
    parameters: dict = {
        "name": title[:64].replace(" ", "_") or "vicregl",
        "nodes": options.nodes,
        "gpus_per_node": options.gpus_per_node,
        "tasks_per_node": tasks,
        "cpus_per_task": options.cpus_per_task,
        "timeout_min": options.time_min,
    }
    if options.mem_gb is not None:
        parameters["mem_gb"] = options.mem_gb
    slurm_only = {
        "slurm_partition": options.partition,
        "slurm_account": options.account,
        "slurm_qos": options.qos,
        "slurm_constraint": options.constraint,
        "slurm_additional_parameters": options.additional or None,
    }
    if options.cluster == "slurm":
        parameters.update({key: value for key, value in slurm_only.items() if value is not None})
    executor.update_parameters(**parameters)
    return executor


def run_sweep(
    out_dir: Path,
    points: list[SweepPoint],
    run_point: RunPoint,
    *,
    metric: str,
    title: str,
    slurm: SlurmOptions | None = None,
) -> list[dict]:
    """Run every point without a result.json (in order, or one submitit job each), then write summary.json and
    print the table with the best row (by `metric`) marked. Returns the records in the order of `points`."""
    _check_points(points)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = {point.name for point in points if (out_dir / point.name / RESULT_FILE).is_file()}
    pending = [point for point in points if point.name not in finished]
    if finished:
        print(f"{title}: skipping {len(finished)} finished run(s): {sorted(finished)}", file=sys.stderr)
    failures: list[str] = []
    if slurm is None:
        for point in pending:
            run_and_write(run_point, point, out_dir / point.name)
    elif pending:
        failures = _run_on_slurm(out_dir, pending, run_point, slurm, title)
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_initialized():  # torchrun: rank 0 wrote every result
        distributed.barrier()
    records = [
        read_results([out_dir / point.name / RESULT_FILE])[0]
        for point in points
        if (out_dir / point.name / RESULT_FILE).is_file()
    ]
    if _is_main_process():
        write_summary(out_dir, records, metric, title)
        print_table(records, metric, title)
    if failures:
        raise RuntimeError(f"{title}: {len(failures)} run(s) failed:\n" + "\n".join(failures))
    return records


def _run_on_slurm(
    out_dir: Path, pending: list[SweepPoint], run_point: RunPoint, slurm: SlurmOptions, title: str
) -> list[str]:
    """Submit one job per pending point, wait for all; return a line per failed job (its error and logs)."""
    executor = _executor(slurm, out_dir, title)
    jobs = []
    with executor.batch():
        for point in pending:
            jobs.append(executor.submit(run_and_write, run_point, point, out_dir / point.name))
    print(f"{title}: submitted {len(jobs)} job(s): {[job.job_id for job in jobs]}", file=sys.stderr)
    failures = []
    for point, job in zip(pending, jobs, strict=True):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - one failed job must not hide the others' results
            failures.append(f"  {point.name} (job {job.job_id}, logs {job.paths.stderr}): {error}")
    return failures
