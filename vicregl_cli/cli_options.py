"""The Typer side of the shared run options: one decorator adds --device, --dry-run and the --slurm group to
a subcommand and hands the command a RunOptions (vicregl_cli.options) instead of a dozen flags."""

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from vicregl_cli.options import FeatureOptions, RunOptions, SlurmOptions, default_cache_dir

SLURM = "SLURM (one job per sweep point)"


def _option(
    name: str, annotation: Any, default: Any, flags: tuple[str, ...], help: str, panel: str | None = None
) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=typer.Option(default, *flags, help=help, rich_help_panel=panel),
    )


def _parameters(gpus_per_node: int, time_min: int, cpus_per_task: int) -> list[inspect.Parameter]:
    return [
        _option("device", str, "auto", ("--device",), "auto (cuda when visible), cuda or cpu", None),
        _option("dry_run", bool, False, ("--dry-run",),
                "Check every input, print the plan (points, weights sha256, SLURM job); run nothing", None),
        _option("slurm", bool, False, ("--slurm",), "Run through SLURM (submitit)", SLURM),
        _option("partition", str, None, ("--partition",), "SLURM partition", SLURM),
        _option("nodes", int, 1, ("--nodes",), "Nodes per job", SLURM),
        _option("gpus_per_node", int, gpus_per_node, ("--gpus-per-node",), "GPUs (= tasks) per node", SLURM),
        _option("cpus_per_task", int, cpus_per_task, ("--cpus-per-task",), "CPU cores per task", SLURM),
        _option("time", int, time_min, ("--time",), "Time limit per job in minutes", SLURM),
        _option("account", str, None, ("--account",), "SLURM account", SLURM),
        _option("qos", str, None, ("--qos",), "SLURM quality of service", SLURM),
        _option("mem_gb", int, None, ("--mem-gb",), "Memory per node in GB", SLURM),
        _option("slurm_folder", Path, None, ("--slurm-folder",), "submitit logs (default OUT/slurm)", SLURM),
        _option("slurm_cluster", str, "slurm", ("--slurm-cluster",),
                "slurm, or local (submitit's local executor: jobs on this machine)", SLURM),
    ]  # fmt: skip


def _run_options(values: dict[str, Any]) -> RunOptions:
    slurm = None
    if values["slurm"]:
        slurm = SlurmOptions(
            partition=values["partition"],
            nodes=values["nodes"],
            gpus_per_node=values["gpus_per_node"],
            cpus_per_task=values["cpus_per_task"],
            time_min=values["time"],
            account=values["account"],
            qos=values["qos"],
            mem_gb=values["mem_gb"],
            cluster=values["slurm_cluster"],
            folder=values["slurm_folder"],
        )
        slurm.check()
    return RunOptions(device=values["device"], dry_run=values["dry_run"], slurm=slurm)


def with_options(
    target: str, parameters: list[inspect.Parameter], build: Callable[[dict[str, Any]], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Typer command that takes `target`: `parameters` appear in its --help, and their values
    arrive as `target=build(values)` — one definition of a group of options for several commands."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [parameter for name, parameter in signature.parameters.items() if name != target]
        names = [parameter.name for parameter in parameters]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(*args, **{target: build(values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *parameters])
        wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in [*own, *parameters]}
        return wrapper

    return decorate


def with_run_options(
    gpus_per_node: int = 1, time_min: int = 24 * 60, cpus_per_task: int = 10
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The shared --device, --dry-run and --slurm group (these per-command defaults), as `run: RunOptions`."""
    return with_options("run", _parameters(gpus_per_node, time_min, cpus_per_task), _run_options)


def _feature_parameters() -> list[inspect.Parameter]:
    return [
        _option("image_size", int, 224, ("--image-size",), "Centre-crop side (train: RandomResizedCrop)"),
        _option("resize", int, 256, ("--resize",), "Short side before the centre crop"),
        _option("workers", int, 8, ("--workers",), "Data-loading processes per process"),
        _option("cache_dir", Path, None, ("--cache-dir",), "Feature cache (~/.cache/vicregl/features)"),
        _option("no_cache", bool, False, ("--no-cache",), "Neither read nor write cached features"),
        _option("bn_recalibration", bool, None, ("--bn-recalibration/--no-bn-recalibration",),
                "Re-estimate BatchNorm statistics on train images (default: for --weights random only)"),
        _option("bn_batches", int, 100, ("--bn-batches",), "Batches for the BatchNorm re-estimation"),
    ]  # fmt: skip


def _feature_options(values: dict[str, Any]) -> FeatureOptions:
    cache_dir = None if values["no_cache"] else values["cache_dir"] or default_cache_dir()
    return FeatureOptions(
        image_size=values["image_size"], resize=values["resize"], num_workers=values["workers"],
        cache_dir=cache_dir, recalibrate_bn=values["bn_recalibration"], bn_batches=values["bn_batches"],
    )  # fmt: skip


def with_feature_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The frozen-feature options knn and linear share, as `features: FeatureOptions`."""
    return with_options("features", _feature_parameters(), _feature_options)
