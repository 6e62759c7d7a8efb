"""`vicregl segment` and `detect`: dense transfer on mmsegmentation, detectron2 or the torchvision engine."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from vicregl_cli.cli_options import with_run_options
from vicregl_cli.commands.app import BACKBONE_HELP, DATA_FLAGS, WEIGHTS_HELP, app, multi_value
from vicregl_cli.errors import UserError
from vicregl_cli.options import RunOptions
from vicregl_cli.sweep import parse_grid, run_protocol


@app.command(
    cls=multi_value("--lr", "--cfg-options"),
    epilog="Example: vicregl segment --weights runs/r50/backbone.pth --dataset voc-aug "
    "--data VOCdevkit/VOC2012 --out runs/r50-seg",
)
@with_run_options(gpus_per_node=4)
def segment(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    dataset: str = typer.Option(..., help="voc, voc-aug, cityscapes or ade20k (vicregl_cli/configs/segment)"),
    data: Path = typer.Option(..., *DATA_FLAGS, help="Dataset root, e.g. VOCdevkit/VOC2012"),
    out: Path = typer.Option(..., help="Sweep folder: one run folder per lr, summary.json"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    protocol: str = typer.Option("linear", help="linear (BN + 1x1 conv) or fcn (mmseg's FCNHead, ResNet)"),
    frozen: bool = typer.Option(True, "--frozen/--finetune", help="Freeze weights and BN statistics"),
    lr: list[str] = typer.Option(None, help="Learning rates, --lr 0.1 0.05 (a sweep); default: papers' grid"),
    iters: int = typer.Option(None, help="Training iterations (default: the dataset's schedule, 40k / 160k)"),
    batch_size: int = typer.Option(None, help="Total batch over all processes (default 16; Cityscapes 8)"),
    crop_size: int = typer.Option(None, help="Square crop side (default 512, shrunk for tiny images)"),
    cfg_options: list[str] = typer.Option(None, help="mmengine overrides: --cfg-options a.b=1 c=[1,2]"),
    export_only: bool = typer.Option(
        False, "--export-only", help="Write config.py + backbone.pth per lr and print mmseg's commands"
    ),
    gpus: int = typer.Option(1, help="--export-only: GPUs the config is written for (batch split, SyncBN)"),
    workers: int = typer.Option(4, help="Data-loading processes per training process"),
    seed: int = typer.Option(0, help="mmengine randomness seed; random init seed"),
    *,
    run: RunOptions,
) -> None:
    """Semantic segmentation transfer (linear / FCN heads) on mmsegmentation, with a learning-rate sweep."""
    if export_only and run.slurm is not None:
        raise UserError("--export-only writes the configs here and trains nothing: drop --slurm")
    lrs = tuple(parse_grid(lr, "--lr")) or None  # bad values fail before torch loads
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.transfer import segment as segmentation
    from vicregl_cli.transfer.segment_plan import SegmentSettings

    if run.slurm is not None:
        processes = run.slurm.tasks
    elif export_only:
        processes = gpus
    else:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
    settings = SegmentSettings(
        dataset=dataset, data_root=data, protocol=protocol, frozen=frozen, lrs=lrs, iters=iters,
        batch_size=batch_size,
        crop_size=crop_size, processes=processes, workers=workers, seed=seed, device=run.device,
        cfg_options=tuple(cfg_options or ()),
    )  # fmt: skip
    resolved = resolve_weights(weights, backbone, seed)
    if run.dry_run or not export_only:
        run_protocol(segmentation, settings, resolved, out, run)
        return
    for config_path in segmentation.export_points(segmentation.plan(settings, resolved), out):
        typer.echo(f"# {config_path.parent.name}")
        for command in segmentation.train_commands(config_path, processes):
            typer.echo(command)


@app.command(
    cls=multi_value("--lr"),
    epilog="Example: vicregl detect --weights runs/r50/backbone.pth --dataset voc0712 --data VOCdevkit "
    "--out runs/r50-det",
)
@with_run_options()
def detect(
    weights: str = typer.Option(..., help=WEIGHTS_HELP),
    dataset: str = typer.Option(..., help="voc (one VOC folder: train -> val), voc0712, coco, coco-10pct"),
    data: Path = typer.Option(..., *DATA_FLAGS, help="VOC folder, VOCdevkit (voc0712) or COCO root"),
    out: Path = typer.Option(..., help="Output: sweep folder (one run per lr), or the .pkl + config"),
    backbone: str = typer.Option(None, help=BACKBONE_HELP),
    engine: str = typer.Option(None, help="detectron2 or torchvision (default: detectron2 when installed)"),
    lr: list[str] = typer.Option(None, "--lr", help="Learning rates (a sweep): --lr 0.02 0.01 (0.02 x B/16)"),
    iters: int = typer.Option(None, help="Iterations (24k VOC, 90k COCO); lr steps scale with it"),
    batch_size: int = typer.Option(16, help="Images per iteration, all GPUs together"),
    export_only: bool = typer.Option(False, "--export-only", help="Write backbone.pkl + config only"),
    num_gpus: int = typer.Option(None, help="detectron2: GPUs per machine (default: the GPUs visible)"),
    frozen: bool = typer.Option(False, "--frozen", help="Linear Det.: backbone + res5 frozen (VOC C4 only)"),
    min_sizes: str = typer.Option(None, help="torchvision: train shorter sides, e.g. 480,512,...,800 (auto)"),
    test_size: int = typer.Option(None, help="torchvision: test shorter side (800; auto)"),
    max_size: int = typer.Option(None, help="torchvision: longer-side cap (default 1333)"),
    rois_per_image: int = typer.Option(None, help="torchvision: RoIs sampled per image (default 512)"),
    rpn_batch_per_image: int = typer.Option(None, help="torchvision: anchors sampled per image (256)"),
    proposals_train: int = typer.Option(None, help="torchvision: proposals kept after NMS, training (2000)"),
    proposals_test: int = typer.Option(None, help="torchvision: proposals kept after NMS, test (1000)"),
    precise_bn_iters: int = typer.Option(200, help="torchvision: PreciseBN batches before evaluation"),
    workers: int = typer.Option(2, help="torchvision: data-loading processes"),
    checkpoint_every: int = typer.Option(1000, help="torchvision: iterations between checkpoints (resumed)"),
    seed: int = typer.Option(0, help="Random init; torchvision: head init, batch order and flip seed"),
    *,
    run: RunOptions,
) -> None:
    """Object detection transfer (Faster R-CNN C4 on VOC, Mask R-CNN FPN on COCO) on detectron2 or the
    embedded torchvision engine."""
    if export_only and run.slurm is not None:
        raise UserError("--export-only writes the .pkl and config here and trains nothing: drop --slurm")
    lrs = tuple(parse_grid(lr, "--lr")) or None  # bad values fail before torch loads
    train_sizes = tuple(parse_grid([min_sizes] if min_sizes else [], "--min-sizes", int)) or None
    from vicregl_cli.backbones import resolve_weights
    from vicregl_cli.transfer import detect as detect_protocol
    from vicregl_cli.transfer.detect import visible_gpus
    from vicregl_cli.transfer.detectron2_run import launch_command
    from vicregl_cli.transfer.tv_detection import DetectionSettings

    settings = DetectionSettings(
        min_sizes=train_sizes, test_size=test_size, max_size=max_size, rois_per_image=rois_per_image,
        rpn_batch_per_image=rpn_batch_per_image, proposals_train=proposals_train,
        proposals_test=proposals_test, precise_bn_iters=precise_bn_iters, workers=workers, seed=seed,
        checkpoint_every=checkpoint_every,
    )  # fmt: skip
    if run.slurm is not None:  # one task per job: detectron2's launcher starts the node's GPU workers itself
        if run.slurm.nodes > 1:
            raise UserError("detect --slurm runs one node per job (--nodes 1): detectron2's launcher starts "
                            "the node's GPU workers, the torchvision engine trains on one GPU")  # fmt: skip
        run = dataclasses.replace(run, slurm=dataclasses.replace(run.slurm, one_task_per_node=True))
        num_gpus = num_gpus or run.slurm.gpus_per_node  # the job's GPUs, not this machine's
    config = detect_protocol.DetectConfig(
        dataset=dataset, data_root=data, engine=engine, lrs=lrs, iters=iters, batch_size=batch_size,
        num_gpus=num_gpus, settings=settings, device=run.device, frozen=frozen,
    )  # fmt: skip
    resolved = resolve_weights(weights, backbone, seed)
    if run.dry_run or not export_only:
        run_protocol(detect_protocol, config, resolved, out, run)
        return
    result = detect_protocol.export(config, resolved, out)
    typer.echo(f"wrote {result.weights} ({result.num_tensors} tensors) and {result.config}")
    typer.echo("train: " + " ".join(launch_command(result.config, num_gpus or visible_gpus())))
