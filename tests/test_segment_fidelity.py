"""`vicregl segment` against the official VICRegL segmentation configs (mmseg 0.x): what --export-only writes
for ConvNeXt and ResNet on VOC and Cityscapes, head overrides, crops of the dataset layouts, our dilated
ResNet against mmseg's, and the learning-rate curve against mmseg 0.x's formula. mmengine / mmseg (the
optional `seg` extra) are imported inside the tests, mmseg only after vicregl's mmcv.ops stand-in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from vicregl_cli.backbones import resolve_weights
from vicregl_cli.cli import app
from vicregl_cli.errors import UserError
from vicregl_cli.transfer import segment
from vicregl_cli.transfer.segment_config import build_config
from vicregl_cli.transfer.segment_plan import SegmentPlan, SegmentSettings, check_settings

VOC_CLASSES = ("disc", "square")  # + background: 3 classes
LR = "0.001"


def _image_and_mask(image: Path, mask: Path, size: tuple[int, int], label: int) -> None:
    """A grey image and a mask of one label, both (height, width) = size."""
    for path in (image, mask):
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(image)
    Image.fromarray(np.full(size, label, np.uint8)).save(mask)


def _cityscapes(root: Path, size: tuple[int, int]) -> Path:
    """A Cityscapes layout of one image per split (label 18, the last train id)."""
    for split in ("train", "val"):
        image = root / f"leftImg8bit/{split}/aachen/a_1_leftImg8bit.png"
        _image_and_mask(image, root / f"gtFine/{split}/aachen/a_1_gtFine_labelTrainIds.png", size, 18)
    return root


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """A VOC layout of 256 x 320 images: short side half the 512 crop, so the crop is not shrunk."""
    root = tmp_path_factory.mktemp("voc")
    (root / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        ids = [f"{split}_{index}" for index in range(2)]
        (root / f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(ids) + "\n")
        for label, name in enumerate(ids, start=1):
            _image_and_mask(
                root / f"JPEGImages/{name}.jpg", root / f"SegmentationClass/{name}.png", (256, 320), label
            )
    return root


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    """A Cityscapes layout of 256 x 512 images (the 512 x 1024 crop is not shrunk)."""
    return _cityscapes(tmp_path_factory.mktemp("cityscapes"), (256, 512))


def _export(out: Path, root: Path, dataset: str, backbone: str, *cfg_options: str):
    """`vicregl segment --export-only` (random weights, one lr): the written config.py, read by mmengine."""
    from mmengine.config import Config  # the optional `seg` extra, as in vicregl_cli

    arguments = ["segment", "--weights", "random", "--backbone", backbone, "--dataset", dataset]
    arguments += ["--data-root", str(root), "--lr", LR, "--workers", "0", "--out", str(out), "--export-only"]
    if cfg_options:
        arguments += ["--cfg-options", *cfg_options]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return Config.fromfile(str(out / f"lr={LR}" / "config.py"))


def _build_model(cfg) -> nn.Module:
    from mmengine.registry import DefaultScope

    from vicregl_cli.transfer.mmseg_models import MODELS

    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(cfg.model)


def _lr_curve(cfg, model: nn.Module, iters: int) -> list[float]:
    """The learning rate of each of the first `iters` iterations: the config's optimiser and schedulers built
    by mmengine, stepped once after each iteration as the Runner's ParamSchedulerHook does."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optim_wrapper)) for s in cfg.param_scheduler]
    curve = []
    for _ in range(iters):
        lrs = optim_wrapper.get_lr()["lr"]
        assert len(set(lrs)) == 1
        curve.append(lrs[0])
        for scheduler in schedulers:
            scheduler.step()
    return curve


def _mmseg_0x_lr(
    it: int, base_lr: float, max_iters: int, power: float, min_lr: float, warmup_iters: int
) -> float:
    """mmcv 1.x's PolyLrUpdaterHook (by_epoch=False) with warmup='linear', warmup_ratio=1e-6."""
    lr = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it < warmup_iters:
        lr *= 1 - (1 - it / warmup_iters) * (1 - 1e-6)
    return lr


def _mismatches(curve: list[float], expected: list[float]) -> list[tuple[int, float, float]]:
    return [(it, ours, ref) for it, (ours, ref) in enumerate(zip(curve, expected, strict=True))
            if ours != pytest.approx(ref, rel=1e-6)]  # fmt: skip


@pytest.fixture(scope="module")
def convnext_cfg(voc_root, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("convnext"), voc_root, "voc", "convnext_small")


@pytest.fixture(scope="module")
def convnext_model(convnext_cfg) -> nn.Module:
    return _build_model(convnext_cfg)


def test_convnext_voc_export_slides_512_341_without_head_dropout(convnext_cfg):
    assert convnext_cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    head = convnext_cfg.model.decode_head
    assert head.dropout_ratio == 0.0 and head.in_channels == [96, 192, 384, 768] and head.channels == 1440


def test_convnext_adamw_decays_every_parameter(convnext_cfg, convnext_model):
    from mmengine.optim import build_optim_wrapper

    assert "paramwise_cfg" not in convnext_cfg.optim_wrapper
    optimizer = build_optim_wrapper(convnext_model, convnext_cfg.optim_wrapper).optimizer
    assert type(optimizer).__name__ == "AdamW"
    groups = optimizer.param_groups
    decayed = {id(p) for group in groups if group["weight_decay"] == 0.05 for p in group["params"]}
    assert decayed == {id(parameter) for parameter in convnext_model.parameters()}
    head = convnext_model.decode_head
    assert {id(head.bn.weight), id(head.bn.bias), id(head.conv_seg.bias)} <= decayed


def test_convnext_lr_curve_is_mmseg_0x_poly_times_linear_warmup(convnext_cfg, convnext_model):
    # the official ConvNeXt lr_config: policy='poly', power=1.0, min_lr=0.0, warmup='linear',
    # warmup_iters=1500, warmup_ratio=1e-6, by_epoch=False; 40k iterations
    assert convnext_cfg.train_cfg.max_iters == 40000
    curve = _lr_curve(convnext_cfg, convnext_model, 1600)
    expected = [_mmseg_0x_lr(it, float(LR), 40000, 1.0, 0.0, 1500) for it in range(1600)]
    assert _mismatches(curve, expected) == []
    assert curve[0] == pytest.approx(1e-9) and curve[1500] == pytest.approx(1e-3 * (1 - 1500 / 40000))


def test_convnext_slide_inference_runs_in_the_runner(voc_root, tmp_path, monkeypatch):
    from vicregl_cli.transfer.mmseg_models import MODELS  # mmseg loads after the mmcv.ops stand-in

    encoder_decoder = MODELS.get("EncoderDecoder")
    slides = []
    slide_inference = encoder_decoder.slide_inference

    def counting_slide(self, inputs: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        slides.append((tuple(inputs.shape[2:]), dict(self.test_cfg)))
        return slide_inference(self, inputs, batch_img_metas)

    monkeypatch.setattr(encoder_decoder, "slide_inference", counting_slide)
    settings = SegmentSettings(
        dataset="voc", data_root=voc_root, iters=1, batch_size=2, crop_size=64, workers=0, lrs=(1e-3,)
    )
    (point,) = segment.plan(settings, resolve_weights("random", "convnext_tiny"))
    point = dataclasses.replace(point, folder=tmp_path / "run")
    metrics, _ = segment.train_and_evaluate(
        segment.export_point(point, segment.export_state(point.weights)), point.folder
    )
    assert 0.0 <= metrics["mIoU"] <= 100.0
    window = dict(mode="slide", crop_size=(64, 64), stride=(43, 43))  # 512 / 341, scaled to the 64 crop
    assert slides == [((64, 80), window)] * 2  # the two validation images, 256 x 320 resized to 64 x 80


def test_convnext_head_gets_four_stages_concatenated(convnext_model):
    model = convnext_model.eval()
    seen = []
    hook = model.decode_head.bn.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    with torch.no_grad():
        logits = model.decode_head(model.extract_feat(torch.randn(1, 3, 64, 64)))
    hook.remove()
    assert seen == [(1, 1440, 16, 16)]  # 96 + 192 + 384 + 768 channels at stride 4
    assert model.decode_head.conv_seg.in_channels == 1440
    assert logits.shape == (1, len(VOC_CLASSES) + 1, 16, 16)


@pytest.mark.parametrize("dataset, crop", [("voc", (512, 512)), ("cityscapes", (512, 1024))])
def test_resnet50_export_has_head_dropout_whole_inference_and_the_official_crop(
    dataset, crop, voc_root, cityscapes_root, tmp_path
):
    cfg = _export(tmp_path, voc_root if dataset == "voc" else cityscapes_root, dataset, "resnet50")
    head = cfg.model.decode_head
    assert head.dropout_ratio == 0.1 and head.num_classes == (19 if dataset == "cityscapes" else 3)
    assert cfg.model.test_cfg == dict(mode="whole") and cfg.model.data_preprocessor.size == crop
    (random_crop,) = [step for step in cfg.train_dataloader.dataset.pipeline if step.type == "RandomCrop"]
    assert random_crop.crop_size == crop
    # the official ResNet lr_config: policy='poly', power=0.9, min_lr=1e-4, by_epoch=False; SGD wd 5e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.0005 and "paramwise_cfg" not in cfg.optim_wrapper
    curve = _lr_curve(cfg, nn.Linear(1, 1), 1600)
    assert _mismatches(curve, [_mmseg_0x_lr(it, float(LR), 40000, 0.9, 1e-4, 0) for it in range(1600)]) == []


@pytest.mark.parametrize("backbone, dropout", [("resnet50", 0.0), ("convnext_tiny", 0.1)])
def test_head_dropout_is_overridable_and_the_model_runs(voc_root, tmp_path, backbone, dropout):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    cfg = _export(tmp_path, voc_root, "voc", backbone, f"model.decode_head.dropout_ratio={dropout}")
    assert cfg.model.decode_head.dropout_ratio == dropout
    model = _build_model(cfg).train()
    assert model.decode_head.dropout is None if dropout == 0 else model.decode_head.dropout.p == dropout
    label = PixelData(data=torch.ones(1, 64, 64, dtype=torch.long))
    samples = [SegDataSample(gt_sem_seg=label), SegDataSample(gt_sem_seg=label)]
    losses = model.loss(torch.randn(2, 3, 64, 64), samples)
    assert torch.isfinite(losses["decode.loss_ce"]) and losses["decode.loss_ce"] > 0


def test_linear_head_refuses_a_width_it_cannot_have():
    from vicregl_cli.transfer.mmseg_models import LinearSegHead

    head = LinearSegHead([4, 6], num_classes=3, input_transform="resize_concat", in_index=[0, 1])
    assert head.channels == 10 and head.dropout.p == 0.1  # BaseDecodeHead's default dropout
    with pytest.raises(UserError, match=r"channels must be 10 \(its input width\), not 8"):
        LinearSegHead([4, 6], channels=8, num_classes=3, input_transform="resize_concat", in_index=[0, 1])


# --- crops of the dataset layouts ----------------------------------------------------------------------


def _plan(data_root: Path, **changes) -> SegmentPlan:
    settings = SegmentSettings(data_root=data_root, workers=0, **changes)
    return check_settings(settings, resolve_weights("random", "resnet18"))


def test_cityscapes_crop_shrinks_in_proportion_and_crop_size_is_square(tmp_path):
    small = _cityscapes(tmp_path / "small", (80, 160))
    plan = _plan(small, dataset="cityscapes")
    assert len(plan.class_names) == 19 and plan.class_names[0] == "road" and plan.batch_size == 8
    assert plan.crop_size == (64, 128) and plan.resize_scale == (256, 128)  # (2048, 1024) x 64 / 512
    assert any("crop 512x1024 shrunk to 64x128" in note for note in plan.notes)
    square = _plan(small, dataset="cityscapes", crop_size=256)
    assert square.crop_size == (256, 256) and square.resize_scale == (1024, 512) and not square.notes


def test_convnext_slide_window_follows_a_shrunk_crop(tmp_path):
    small = _cityscapes(tmp_path / "small", (80, 160))
    weights = resolve_weights("random", "convnext_tiny")
    plan = check_settings(SegmentSettings(dataset="cityscapes", data_root=small, workers=0), weights)
    test_cfg = build_config(plan, weights, 1e-3)["model"]["test_cfg"]
    assert test_cfg == dict(mode="slide", crop_size=(64, 128), stride=(43, 85))  # 341 / 512 of each side


def test_ade20k_layout_uses_mmseg_class_list(tmp_path):
    ade = tmp_path / "ade"
    for split in ("training", "validation"):
        _image_and_mask(ade / f"images/{split}/A_1.jpg", ade / f"annotations/{split}/A_1.png", (40, 80), 150)
    plan = _plan(ade, dataset="ade20k")
    assert len(plan.class_names) == 150 and plan.iters == 160000  # label 150 is valid: 0 is ignored
    _image_and_mask(ade / "images/validation/A_2.jpg", ade / "annotations/validation/A_2.png", (40, 80), 151)
    with pytest.raises(UserError, match=r"labels \[151\] but mmseg's ADE20KDataset defines 150 classes"):
        _plan(ade, dataset="ade20k")


# --- our dilated ResNet against mmseg's ----------------------------------------------------------------


@pytest.mark.parametrize("name, depth", [("resnet18", 18), ("resnet50", 50)])
def test_dilated_resnet_is_output_stride_8_and_equals_mmseg_resnet(name, depth):
    from vicregl_cli.transfer.mmseg_models import MODELS, VICRegLBackbone  # mmseg after the mmcv.ops stand-in

    torch.manual_seed(0)
    ours = VICRegLBackbone(name, output_stride=8).eval()
    reference = MODELS.get("ResNet")(
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
