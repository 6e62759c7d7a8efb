"""`vicregl segment`: mmseg shims, our mmseg modules, export, frozen runs, bad inputs (resnet18, 64 px)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vicregl_cli.backbones import build_backbone, read_backbone_state, resolve_weights, save_backbone
from vicregl_cli.backbones import weights as weights_module
from vicregl_cli.errors import UserError
from vicregl_cli.sweep import SweepPoint, run_protocol
from vicregl_cli.transfer import segment
from vicregl_cli.transfer.mmseg_shims import point_sample, sigmoid_focal_loss
from vicregl_cli.transfer.segment_config import build_config
from vicregl_cli.transfer.segment_plan import SegmentPlan, SegmentSettings

NUM_SYNTHETIC_CLASSES = 12


@pytest.fixture(scope="module")
def voc_root(synthetic_voc) -> Path:
    """The shared VOC2012/ of 12 + 12 images of 64 px (conftest.py)."""
    return synthetic_voc


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> Path:
    """A resnet18 file whose BN running statistics are not the init values (a drift would show)."""
    torch.manual_seed(1)
    model = build_backbone("resnet18")
    for name, buffer in model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("running_var"):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    save_backbone(path, "resnet18", model.state_dict())
    return path


def _settings(voc_root: Path, **changes) -> SegmentSettings:
    values = dict(dataset="voc", data_root=voc_root, iters=3, batch_size=2, crop_size=64, workers=0)
    values.update(changes)
    return SegmentSettings(**values)


def _points(
    voc_root: Path, weights: Path | str = "random", backbone: str = "resnet18", **changes
) -> list[SweepPoint]:
    """segment.plan on the test settings, the weights resolved as the CLI does."""
    return segment.plan(_settings(voc_root, **changes), resolve_weights(weights, backbone))


def _plan(data_root: Path, **changes) -> SegmentPlan:
    """The checked SegmentPlan every point of a (random-init resnet18) plan shares."""
    return _points(data_root, **changes)[0].task


def _config(point: SweepPoint, lr: float) -> dict:
    return build_config(point.task, point.weights, lr)


# --- the mmcv.ops stand-ins against formulas written here ----------------------------------------------


def test_point_sample_is_bilinear_at_normalised_points():
    grid = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    points = torch.tensor([[[0.5, 0.5], [0.25, 0.25], [0.75, 0.25], [0.5, 0.25]]])  # (x, y) in [0, 1]
    sampled = point_sample(grid, points)
    assert sampled.shape == (1, 1, 4)
    # pixel centres at 0.25 / 0.75 (align_corners=False): image centre = mean; (0.75, 0.25) = top right
    assert torch.allclose(sampled[0, 0], torch.tensor([2.5, 1.0, 2.0, 1.5]))


def test_sigmoid_focal_loss_matches_the_focal_loss_formula():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    target = torch.tensor([0, 3, 1, 4, 2, 0])  # 4 = no class (all negatives)
    gamma, alpha = 2.0, 0.25
    expected = torch.zeros(6, 4)
    for row in range(6):
        for column in range(4):
            p = torch.sigmoid(logits[row, column])
            if target[row] == column:
                expected[row, column] = -alpha * (1 - p) ** gamma * torch.log(p)
            else:
                expected[row, column] = -(1 - alpha) * p**gamma * torch.log(1 - p)
    loss = sigmoid_focal_loss(logits, target, gamma, alpha, None, "none")
    assert torch.allclose(loss, expected, atol=1e-6)
    weight = torch.arange(1.0, 7.0)
    assert torch.allclose(
        sigmoid_focal_loss(logits, target, gamma, alpha, weight, "mean"),
        (expected * weight[:, None]).sum() / 6,
    )


def test_mmseg_imports_with_the_standin_and_refuses_missing_ops():
    import vicregl_cli.transfer.mmseg_models  # noqa: F401 - registers the stand-in first when needed

    if getattr(sys.modules["mmcv.ops"], "VICREGL_STANDIN", False):
        with pytest.raises(ModuleNotFoundError, match="compiled mmcv"):
            from mmcv.ops import CrissCrossAttention  # noqa: F401


# --- templates ----------------------------------------------------------------------------------------


def test_templates_hold_the_papers_schedules(voc_root):
    points = _points(voc_root, iters=None, batch_size=None, crop_size=None)
    assert [point.params["lr"] for point in points] == [0.1, 0.05, 0.03, 0.02, 0.01]
    plan = points[0].task
    assert plan.crop_size == (64, 64) and any("crop 512 shrunk to 64" in note for note in plan.notes)
    config = _config(points[0], lr=0.05)
    assert config["optim_wrapper"]["optimizer"] == dict(
        type="SGD", momentum=0.9, weight_decay=0.0005, lr=0.05
    )
    assert config["param_scheduler"] == [
        dict(type="PolyLR", power=0.9, eta_min=0.0001, by_epoch=False, begin=0, end=40001)
    ]
    assert config["train_cfg"]["max_iters"] == 40000 and config["train_dataloader"]["batch_size"] == 16
    assert config["model"]["backbone"]["output_stride"] == 8
    assert config["model"]["decode_head"]["type"] == "LinearSegHead"
    assert config["model"]["decode_head"]["dropout_ratio"] == 0.1
    assert config["model"]["test_cfg"] == dict(mode="whole")
    assert config["model"]["decode_head"]["norm_cfg"]["type"] == "BN"
    convnext = _points(voc_root, backbone="convnext_small", frozen=False, iters=None)
    assert [point.params["lr"] for point in convnext] == [1e-4, 8e-5, 3e-5, 1e-5, 8e-6, 3e-6, 1e-6]
    schedule = _config(convnext[0], lr=1e-4)["param_scheduler"]
    assert schedule == [  # both from iteration 0: mmengine multiplies them (mmseg 0.x's curve)
        dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1501),
        dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=40001),
    ]
    short = _config(_points(voc_root, backbone="convnext_small", iters=1000)[0], lr=1e-3)["param_scheduler"]
    assert [(s["type"], s["end"]) for s in short] == [("LinearLR", 101), ("PolyLR", 1001)]  # warm-up capped
    fcn = _config(_points(voc_root, protocol="fcn", processes=4, batch_size=None, frozen=False)[0], 0.01)
    assert (
        fcn["model"]["decode_head"]["type"] == "FCNHead" and fcn["model"]["auxiliary_head"]["in_index"] == 2
    )
    assert fcn["model"]["decode_head"]["norm_cfg"]["type"] == "SyncBN" and fcn["sync_bn"] == "torch"


# --- runs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_run_leaves_every_backbone_tensor_bit_identical(voc_root, resnet18_weights, tmp_path, frozen):
    (point,) = _points(voc_root, resnet18_weights, frozen=frozen, lrs=(0.05,))
    point = dataclasses.replace(point, folder=tmp_path / "run")
    config_path = segment.export_point(point, segment.export_state(point.weights))
    metrics, model = segment.train_and_evaluate(config_path, point.folder)
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0
    _, original = read_backbone_state(resnet18_weights)
    trained = model.backbone.state_dict()
    assert set(trained) == set(original)
    identical = {key for key, value in trained.items() if torch.equal(value, original[key])}
    if frozen:
        assert identical == set(original)
    else:  # the same check fails when the backbone trains: weights and BN statistics move
        assert "layer1.0.conv1.weight" not in identical and "bn1.running_mean" not in identical


def test_exported_config_trains_with_plain_mmengine_runner(voc_root, resnet18_weights, tmp_path):
    points = _points(voc_root, resnet18_weights, lrs=(0.02,))
    (config_path,) = segment.export_points(points, tmp_path / "seg")
    exported = torch.load(config_path.parent / "backbone.pth", weights_only=True)
    _, original = read_backbone_state(resnet18_weights)
    assert set(exported) == {f"backbone.{key}" for key in original}
    script = (
        "import sys\n"
        "from mmengine.config import Config\n"
        "from mmengine.runner import Runner\n"
        "cfg = Config.fromfile(sys.argv[1])\n"
        "cfg.work_dir = sys.argv[2]\n"
        "Runner.from_cfg(cfg).train()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-c", script, str(config_path), str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (scalars,) = work.glob("*/vis_data/scalars.json")  # mmengine's own record of the validation metrics
    evaluations = [json.loads(line) for line in scalars.read_text().splitlines() if '"mIoU"' in line]
    assert len(evaluations) == 1
    metrics = evaluations[0]
    assert 0.0 <= metrics["mIoU"] <= 100.0
    assert "IoU.background" in metrics


def test_cli_lr_list_and_cfg_options_export(voc_root, tmp_path):
    from vicregl_cli.cli import app

    out = tmp_path / "seg"
    arguments = [
        "segment",
        "--weights",
        "random",
        "--backbone",
        "resnet18",
        "--dataset",
        "voc",
        "--data-root",
        str(voc_root),
        "--lr",
        "0.01",
        "0.05",
        "--iters",
        "7",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--out",
        str(out),
        "--export-only",
        "--cfg-options",
        "train_cfg.val_interval=2",
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["lr=0.01", "lr=0.05"]
    text = (out / "lr=0.05" / "config.py").read_text()
    assert "'lr': 0.05" in text and "'val_interval': 2" in text and "'max_iters': 7" in text
    assert "mim train mmseg" in result.output and "tools/train.py" in result.output


def test_plan_names_the_benchmark_and_records_what_defines_each_run(voc_root, resnet18_weights):
    settings = _settings(voc_root, lrs=(0.05, 0.01))
    weights = resolve_weights(resnet18_weights, "resnet18")
    points = segment.plan(settings, weights)
    assert [point.name for point in points] == ["lr=0.05", "lr=0.01"]
    assert {point.protocol for point in points} == {"segment-voc-linear-frozen"}
    assert {point.dataset for point in points} == {f"voc:{voc_root.resolve()}"}
    assert all(point.weights is weights and point.task is points[0].task for point in points)
    assert points[0].params == {
        "lr": 0.05,
        "frozen": True,
        "iters": 3,
        "batch_size": 2,
        "crop_size": (64, 64),
        "resize_scale": (256, 64),
        "classes": NUM_SYNTHETIC_CLASSES + 1,
        "train_images": 12,
        "val_images": 12,
        "processes": 1,
        "seed": 0,
        "cfg_options": [],
    }
    assert settings == _settings(voc_root, lrs=(0.05, 0.01))  # the caller's settings are left as they were
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lrs = (0.1,)
    fcn = _points(voc_root, dataset="voc", protocol="fcn", frozen=False)
    assert fcn[0].protocol == "segment-voc-fcn-finetune"
    with pytest.raises(UserError, match="learning rates must be positive"):
        _points(voc_root, lrs=(0.1, 0.0))


def test_a_device_the_runner_would_not_use_is_refused(voc_root, monkeypatch):
    import mmengine.device.utils

    monkeypatch.setattr(mmengine.device.utils, "DEVICE", "cuda")  # what the Runner found visible at import
    with pytest.raises(UserError, match="--device cpu: .*CUDA_VISIBLE_DEVICES="):
        _points(voc_root, device="cpu")
    with pytest.raises(UserError, match="--device cuda:1: .*CUDA_VISIBLE_DEVICES=N"):
        _points(voc_root, device="cuda:1")
    assert _points(voc_root, device="cuda")
    monkeypatch.setattr(mmengine.device.utils, "DEVICE", "cpu")
    with pytest.raises(UserError, match="--device cuda: mmengine's Runner trains on cpu"):
        _points(voc_root, device="cuda")
    assert _points(voc_root, device="cpu") and _points(voc_root, device="auto")


def test_export_points_reads_the_weights_file_once(voc_root, resnet18_weights, tmp_path, monkeypatch):
    reads = []
    read = weights_module.read_weights_file

    def counting_read(path):
        reads.append(Path(path))
        return read(path)

    monkeypatch.setattr(weights_module, "read_weights_file", counting_read)
    options = ("train_cfg.val_interval=2",)
    points = _points(voc_root, resnet18_weights, lrs=(0.05, 0.02, 0.01), iters=7, cfg_options=options)
    configs = segment.export_points(points, tmp_path / "seg")
    assert reads == [resnet18_weights]
    assert [config.parent.name for config in configs] == ["lr=0.05", "lr=0.02", "lr=0.01"]
    weight_files = [config.parent / "backbone.pth" for config in configs]
    assert len({os.stat(path).st_ino for path in weight_files}) == 1  # written once, hard-linked
    _, original = read_backbone_state(resnet18_weights)
    exported = torch.load(weight_files[2], weights_only=True)
    assert exported.keys() == {f"backbone.{key}" for key in original}
    assert all(torch.equal(exported[f"backbone.{key}"], value) for key, value in original.items())
    text = configs[1].read_text()
    assert "'lr': 0.02" in text and "'val_interval': 2" in text and "'max_iters': 7" in text
    commands = segment.train_commands(configs[1], 2)
    assert "--nproc_per_node=2" in commands[0] and "mim train mmseg" in commands[1]


def test_run_protocol_writes_the_records_and_the_per_class_iou(voc_root, tmp_path):
    out = tmp_path / "seg"
    settings = _settings(voc_root, lrs=(0.05, 0.01), iters=2)
    records = run_protocol(segment, settings, resolve_weights("random", "resnet18"), out)
    assert [record["run"] for record in records] == ["lr=0.05", "lr=0.01"]
    for record in records:
        folder = out / record["run"]
        assert json.loads((folder / "result.json").read_text()) == record
        assert "per_class_iou" not in record and record["protocol"] == "segment-voc-linear-frozen"
        assert record["backbone"] == "resnet18" and record["weights"]["path"] == "random"
        assert set(record["metrics"]) == {"mIoU", "aAcc", "mAcc"}
        assert 0.0 <= record["metrics"]["mIoU"] <= 100.0
        per_class = json.loads((folder / "per_class_iou.json").read_text())
        assert "background" in per_class and all(0.0 <= value <= 100.0 for value in per_class.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "mIoU" and summary["best"] in ("lr=0.05", "lr=0.01")


# --- bad input -----------------------------------------------------------------------------------------


def test_data_root_without_voc_layout_is_refused(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(UserError, match="lacks the split file ImageSets/Segmentation/train.txt"):
        _points(tmp_path)
    with pytest.raises(UserError, match="data root .* does not exist"):
        _points(tmp_path / "missing")
    with pytest.raises(UserError, match="unknown dataset 'coco'"):
        _points(tmp_path, dataset="coco")


def test_voc_aug_without_aug_masks_is_refused(voc_root):
    with pytest.raises(UserError, match="SegmentationClassAug"):
        _points(voc_root, dataset="voc-aug")


def test_class_count_mismatch_is_refused(voc_root, tmp_path):
    copy = tmp_path / "VOC2012"
    shutil.copytree(voc_root, copy)
    names = (copy / "classes.txt").read_text().split()
    (copy / "classes.txt").write_text("\n".join(names[:3]) + "\n")
    with pytest.raises(UserError, match=r"defines 4 classes .* does not match the masks"):
        _points(copy)


def test_weights_missing_backbone_keys_are_refused(voc_root, resnet18_weights, tmp_path):
    _, state = read_backbone_state(resnet18_weights)
    del state["layer4.1.conv2.weight"]
    broken = tmp_path / "broken.pth"
    save_backbone(broken, "resnet18", state)
    with pytest.raises(UserError, match=r"layer4\.1\.conv2\.weight"):
        _points(voc_root, broken)
    with pytest.raises(UserError, match="holds a resnet18 backbone, not resnet50"):
        _points(voc_root, resnet18_weights, backbone="resnet50")


def test_backbone_that_mmseg_did_not_load_is_an_error():
    from vicregl_cli.transfer.mmseg_models import VICRegLBackbone, check_backbone_loaded

    backbone = VICRegLBackbone("resnet18", output_stride=8)
    state = {key: value.clone() for key, value in backbone.state_dict().items()}
    check_backbone_loaded(backbone, state, "file")
    del state["bn1.running_var"]
    state["conv1.weight"] += 1
    with pytest.raises(UserError, match=r"missing from the file: bn1\.running_var.*differ .*: conv1\.weight"):
        check_backbone_loaded(backbone, state, "file")


def test_fcn_needs_a_resnet(voc_root):
    with pytest.raises(UserError, match="fcn protocol .* convnext"):
        _points(voc_root, backbone="convnext_tiny", protocol="fcn")


def test_frozen_backbone_has_no_gradients_and_stays_in_eval_mode():
    from vicregl_cli.transfer.mmseg_models import VICRegLBackbone

    backbone = VICRegLBackbone("resnet18", output_stride=8, frozen=True)
    backbone.train()
    assert not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    stages = backbone(torch.randn(2, 3, 32, 32, requires_grad=True))
    assert not stages[-1].requires_grad
    assert F.relu(stages[-1]).shape == (2, 512, 4, 4)
