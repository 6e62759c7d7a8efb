"""`vicregl segment`: mmseg shims, our mmseg modules, export, frozen runs, bad inputs (resnet18, 64 px)."""

from __future__ import annotations

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

from vicregl_cli.backbones import build_backbone, read_backbone_state, save_backbone
from vicregl_cli.errors import UserError
from vicregl_cli.transfer.mmseg_config import SegmentSettings, build_config, plan_segmentation
from vicregl_cli.transfer.mmseg_shims import point_sample, sigmoid_focal_loss

NUM_SYNTHETIC_CLASSES = 12


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    from vicregl_cli.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, num_train=12, num_val=12, image_size=64, seed=0, workers=1)
    return out / "VOC2012"


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


def _settings(voc_root: Path, weights: Path | None, **changes) -> SegmentSettings:
    values = dict(
        dataset="voc",
        data_root=voc_root,
        backbone="resnet18",
        weights=weights,
        iters=3,
        batch_size=2,
        crop_size=64,
        workers=0,
    )
    values.update(changes)
    return SegmentSettings(**values)


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


# --- our backbone and head inside mmseg ----------------------------------------------------------------


@pytest.mark.parametrize("name, depth", [("resnet18", 18), ("resnet50", 50)])
def test_dilated_resnet_is_output_stride_8_and_equals_mmseg_resnet(name, depth):
    from mmseg.models.backbones import ResNet

    from vicregl_cli.transfer.mmseg_models import VICRegLBackbone

    torch.manual_seed(0)
    ours = VICRegLBackbone(name, output_stride=8).eval()
    reference = ResNet(
        depth=depth,
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        contract_dilation=True,
        style="pytorch",
        out_indices=(0, 1, 2, 3),
    )
    reference.load_state_dict(ours.state_dict(), strict=True)
    reference.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages, expected = ours(image), reference(image)
    widths = ours.spec.stage_widths
    assert [tuple(stage.shape) for stage in stages] == [
        (1, widths[0], 16, 16),
        (1, widths[1], 8, 8),
        (1, widths[2], 8, 8),
        (1, widths[3], 8, 8),
    ]
    assert ours.spec.output_stride == 8
    for ours_stage, mmseg_stage in zip(stages, expected, strict=True):
        assert torch.allclose(ours_stage, mmseg_stage, atol=1e-5)


def test_convnext_small_linear_head_gets_four_stages_concatenated(voc_root):
    from mmengine.registry import DefaultScope

    from vicregl_cli.transfer.mmseg_models import MODELS

    plan = plan_segmentation(_settings(voc_root, None, backbone="convnext_small"))
    config = build_config(plan, lr=1e-3)
    assert config["model"]["decode_head"]["in_channels"] == [96, 192, 384, 768]
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(config["model"]).eval()
    seen = []
    model.decode_head.bn.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    with torch.no_grad():
        logits = model.decode_head(model.extract_feat(torch.randn(1, 3, 64, 64)))
    assert seen == [(1, 1440, 16, 16)]  # 96 + 192 + 384 + 768 channels at stride 4
    assert model.decode_head.conv_seg.in_channels == 1440
    assert logits.shape == (1, NUM_SYNTHETIC_CLASSES + 1, 16, 16)


def test_templates_hold_the_papers_schedules(voc_root):
    plan = plan_segmentation(_settings(voc_root, None, iters=None, batch_size=None, crop_size=None))
    assert plan.default_lrs == [0.1, 0.05, 0.03, 0.02, 0.01]
    assert plan.crop_size == 64 and any("crop 512 shrunk to 64" in note for note in plan.notes)
    config = build_config(plan, lr=0.05)
    assert config["optim_wrapper"]["optimizer"] == dict(
        type="SGD", momentum=0.9, weight_decay=0.0005, lr=0.05
    )
    assert config["param_scheduler"] == [
        dict(type="PolyLR", power=0.9, eta_min=0.0001, by_epoch=False, begin=0, end=40000)
    ]
    assert config["train_cfg"]["max_iters"] == 40000 and config["train_dataloader"]["batch_size"] == 16
    assert config["model"]["backbone"]["output_stride"] == 8
    assert config["model"]["decode_head"]["type"] == "LinearSegHead"
    assert config["model"]["decode_head"]["norm_cfg"]["type"] == "BN"
    convnext = plan_segmentation(
        _settings(voc_root, None, backbone="convnext_small", frozen=False, iters=None)
    )
    assert convnext.default_lrs == [1e-4, 8e-5, 3e-5, 1e-5, 8e-6, 3e-6, 1e-6]
    schedule = build_config(convnext, lr=1e-4)["param_scheduler"]
    assert schedule[0] == dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500)
    assert schedule[1] == dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=40000)
    fcn_settings = _settings(voc_root, None, protocol="fcn", processes=4, batch_size=None, frozen=False)
    fcn = build_config(plan_segmentation(fcn_settings), 0.01)
    assert (
        fcn["model"]["decode_head"]["type"] == "FCNHead" and fcn["model"]["auxiliary_head"]["in_index"] == 2
    )
    assert fcn["model"]["decode_head"]["norm_cfg"]["type"] == "SyncBN" and fcn["sync_bn"] == "torch"


# --- runs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_run_leaves_every_backbone_tensor_bit_identical(voc_root, resnet18_weights, tmp_path, frozen):
    from vicregl_cli.transfer.mmseg import export_point, train_and_evaluate

    plan = plan_segmentation(_settings(voc_root, resnet18_weights, frozen=frozen))
    config_path = export_point(plan, 0.05, tmp_path / "run")
    metrics, model = train_and_evaluate(config_path, tmp_path / "run")
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
    from vicregl_cli.transfer.mmseg import segment

    (config_path,) = segment(
        _settings(voc_root, resnet18_weights), [0.02], tmp_path / "seg", export_only=True
    )
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


# --- bad input -----------------------------------------------------------------------------------------


def test_data_root_without_voc_layout_is_refused(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(UserError, match="lacks the split file ImageSets/Segmentation/train.txt"):
        plan_segmentation(_settings(tmp_path, None))
    with pytest.raises(UserError, match="data root .* does not exist"):
        plan_segmentation(_settings(tmp_path / "missing", None))
    with pytest.raises(UserError, match="unknown dataset 'coco'"):
        plan_segmentation(_settings(tmp_path, None, dataset="coco"))


def test_voc_aug_without_aug_masks_is_refused(voc_root):
    with pytest.raises(UserError, match="SegmentationClassAug"):
        plan_segmentation(_settings(voc_root, None, dataset="voc-aug"))


def test_class_count_mismatch_is_refused(voc_root, tmp_path):
    copy = tmp_path / "VOC2012"
    shutil.copytree(voc_root, copy)
    names = (copy / "classes.txt").read_text().split()
    (copy / "classes.txt").write_text("\n".join(names[:3]) + "\n")
    with pytest.raises(UserError, match=r"defines 4 classes .* does not match the masks"):
        plan_segmentation(_settings(copy, None))


def test_weights_missing_backbone_keys_are_refused(voc_root, resnet18_weights, tmp_path):
    _, state = read_backbone_state(resnet18_weights)
    del state["layer4.1.conv2.weight"]
    broken = tmp_path / "broken.pth"
    save_backbone(broken, "resnet18", state)
    with pytest.raises(UserError, match=r"layer4\.1\.conv2\.weight"):
        plan_segmentation(_settings(voc_root, broken))
    with pytest.raises(UserError, match="holds a resnet18 backbone, not resnet50"):
        plan_segmentation(_settings(voc_root, resnet18_weights, backbone="resnet50"))


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
        plan_segmentation(_settings(voc_root, None, backbone="convnext_tiny", protocol="fcn"))


def test_frozen_backbone_has_no_gradients_and_stays_in_eval_mode():
    from vicregl_cli.transfer.mmseg_models import VICRegLBackbone

    backbone = VICRegLBackbone("resnet18", output_stride=8, frozen=True)
    backbone.train()
    assert not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    stages = backbone(torch.randn(2, 3, 32, 32, requires_grad=True))
    assert not stages[-1].requires_grad
    assert F.relu(stages[-1]).shape == (2, 512, 4, 4)


def _fake_tree(
    root: Path, image_folder: str, mask_folder: str, name: str, suffixes: tuple[str, str], label: int
):
    import numpy as np
    from PIL import Image

    (root / image_folder).mkdir(parents=True, exist_ok=True)
    (root / mask_folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(root / image_folder / f"{name}{suffixes[0]}")
    Image.fromarray(np.full((40, 80), label, np.uint8)).save(root / mask_folder / f"{name}{suffixes[1]}")


def test_cityscapes_and_ade20k_layouts_use_mmseg_class_lists(tmp_path):
    cityscapes = tmp_path / "cityscapes"
    for split in ("train", "val"):
        suffixes = ("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        _fake_tree(cityscapes, f"leftImg8bit/{split}/aachen", f"gtFine/{split}/aachen", "a_1", suffixes, 18)
    plan = plan_segmentation(_settings(cityscapes, None, dataset="cityscapes", batch_size=None))
    assert len(plan.class_names) == 19 and plan.class_names[0] == "road" and plan.batch_size == 8
    assert plan.resize_scale == (256, 128)  # (2048, 1024) scaled with the crop, 512 -> 64
    ade = tmp_path / "ade"
    for split in ("training", "validation"):
        _fake_tree(ade, f"images/{split}", f"annotations/{split}", "ADE_1", (".jpg", ".png"), 150)
    plan = plan_segmentation(_settings(ade, None, dataset="ade20k", iters=None))
    assert len(plan.class_names) == 150 and plan.iters == 160000  # label 150 is valid: 0 is ignored
    _fake_tree(ade, "images/validation", "annotations/validation", "ADE_2", (".jpg", ".png"), 151)
    with pytest.raises(UserError, match=r"labels \[151\] but mmseg's ADE20KDataset defines 150 classes"):
        plan_segmentation(_settings(ade, None, dataset="ade20k"))
