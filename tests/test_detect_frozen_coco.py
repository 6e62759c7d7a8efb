"""vicregl detect: Linear Det. (`--frozen`) on both engines, the synthetic COCO layout, COCO Mask R-CNN on the
torchvision engine with the subset both engines share, and the torchvision engine's exact resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
import yaml
from pycocotools.coco import COCO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vicregl_cli.backbones.weights import resolve_weights
from vicregl_cli.data.scenes import SCENE, render_scene
from vicregl_cli.errors import UserError
from vicregl_cli.interrupts import TrainingInterrupted
from vicregl_cli.sweep import run_protocol
from vicregl_cli.transfer import detect
from vicregl_cli.transfer import detectron2_config as d2_config
from vicregl_cli.transfer import detectron2_train as launcher
from vicregl_cli.transfer import tv_detection as tv
from vicregl_cli.transfer.detect import DetectConfig
from vicregl_cli.transfer.tv_detection import coco_eval, engine
from vicregl_cli.transfer.tv_detection.geometry import resolve_geometry
from vicregl_cli.transfer.tv_detection.model import build_model

NUM_TRAIN, NUM_VAL, SIZE = 20, 12, 64
TINY = dict(workers=0, precise_bn_iters=1, rois_per_image=8, rpn_batch_per_image=16, proposals_train=20,
            proposals_test=10, detections_per_image=5, log_every=1)  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from vicregl_cli.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=0, workers=1)
    return root


def _voc_box(voc: Path, image_id: str) -> list[list[int]]:
    root = ElementTree.fromstring((voc / "Annotations" / f"{image_id}.xml").read_text())
    return [[int(obj.findtext(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax")]
            for obj in root.iter("object")]  # fmt: skip


# ---------------------------------------------------------------- the synthetic COCO layout


def test_synthetic_coco_layout_loads_with_pycocotools_and_holds_the_exact_masks(synth):
    root = synth / "coco"
    assert sorted(path.name for path in (root / "annotations").iterdir()) == [
        "instances_train2017.json", "instances_val2017.json"]  # fmt: skip
    for split_index, (split, folder, count) in enumerate((("train", "train2017", NUM_TRAIN),
                                                           ("val", "val2017", NUM_VAL))):  # fmt: skip
        coco = COCO(str(root / "annotations" / f"instances_{folder}.json"))
        assert sorted(coco.imgs) == list(range(1, count + 1)) and len(coco.cats) == 12
        for index in (0, count - 1):
            info = coco.imgs[index + 1]
            name = f"{split}_{index:06d}"
            assert info["file_name"] == f"{name}.jpg"
            voc_jpeg = synth / "VOC2012" / "JPEGImages" / f"{name}.jpg"
            assert (root / folder / info["file_name"]).read_bytes() == voc_jpeg.read_bytes()
            # the scene drawn again from its generator (seed 0, split, index, layout "voc" = 0)
            scene = render_scene(np.random.default_rng([0, split_index, index, 0]), SIZE, index % 12, SCENE)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
            assert len(annotations) == len(scene.objects) >= 1
            for number, (ann, obj) in enumerate(zip(annotations, scene.objects, strict=True), start=1):
                exact = (scene.instances == number).astype(np.uint8)
                np.testing.assert_array_equal(coco.annToMask(ann), exact)
                assert ann["area"] == exact.sum() and ann["iscrowd"] == 0
                assert ann["category_id"] == obj.class_index + 1
                assert coco.cats[ann["category_id"]]["name"] == (synth / "VOC2012" / "classes.txt").read_text(
                ).split()[obj.class_index]
            boxes = [[x + 1, y + 1, x + w, y + h] for x, y, w, h in (ann["bbox"] for ann in annotations)]
            assert boxes == _voc_box(synth / "VOC2012", name)  # VOC's 1-based inclusive box


# ---------------------------------------------------------------- the 10 % subset


def test_coco_10pct_subset_is_one_rule_on_both_engines(synth):
    data = tv.load_data("coco-10pct", synth / "coco")
    train = json.loads((synth / "coco" / "annotations" / "instances_train2017.json").read_text())
    records = [{"image_id": image["id"]} for image in reversed(train["images"])]  # as load_coco_json lists
    detectron2_ids = [record["image_id"] for record in launcher.coco_subset(records, 0.1, 0)]
    expected = sorted(np.random.RandomState(0).choice(NUM_TRAIN, size=2, replace=False) + 1)
    assert [int(sample.image_id) for sample in data.train] == detectron2_ids == [int(i) for i in expected]
    assert len(tv.load_data("coco", synth / "coco").train) == NUM_TRAIN
    template = d2_config.template_folder() / "coco_10pct_R_50_FPN_1x.yaml"
    section = yaml.safe_load(template.read_text())["VICREGL"]
    assert (section["SUBSET_FRACTION"], section["SUBSET_SEED"]) == (0.1, 0)


# ---------------------------------------------------------------- COCO evaluation and the end-to-end run


def test_coco_metrics_of_the_ground_truth_are_100_and_of_shifted_boxes_0(synth):
    annotations = synth / "coco" / "annotations" / "instances_val2017.json"
    truth = json.loads(annotations.read_text())
    kept = ("image_id", "category_id", "bbox", "segmentation")
    perfect = [{**{key: ann[key] for key in kept}, "score": 1.0} for ann in truth["annotations"]]
    metrics = coco_eval.coco_metrics(annotations, perfect, with_masks=True)
    for key in ("AP", "AP50", "AP75", "APm", "APm50", "APm75"):
        assert metrics[key] == pytest.approx(100.0), key
    far = [{**result, "bbox": [result["bbox"][0] + 200, *result["bbox"][1:]]} for result in perfect]
    assert coco_eval.coco_metrics(annotations, far, with_masks=False)["AP50"] == 0.0
    assert set(coco_eval.coco_metrics(annotations, [], with_masks=True)) == {
        "AP", "AP50", "AP75", "APm", "APm50", "APm75"}  # fmt: skip


def test_coco_results_convert_boxes_labels_and_masks():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 2:5, 3:7] = 0.9
    output = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 7.0]]), "scores": torch.tensor([0.5]),
              "labels": torch.tensor([2]), "masks": masks}  # fmt: skip
    (result,) = coco_eval.coco_results(7, output, category_ids=(3, 9, 11))
    assert result["image_id"] == 7 and result["category_id"] == 9 and result["bbox"] == [1.0, 2.0, 4.0, 5.0]
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode(result["segmentation"])
    assert decoded.sum() == 12 and decoded[2:5, 3:7].all()


def test_coco_10pct_runs_end_to_end_on_the_torchvision_engine(tmp_path, synth):
    config = DetectConfig(dataset="coco-10pct", data_root=synth / "coco", engine="torchvision", lrs=(0.01,),
                          iters=2, batch_size=2, settings=tv.DetectionSettings(**TINY))  # fmt: skip
    torch.set_num_threads(1)
    run_protocol(detect, config, resolve_weights("random", "resnet18"), tmp_path / "sweep")
    record = json.loads((tmp_path / "sweep" / "lr=0.01" / "result.json").read_text())
    assert record["protocol"] == "detect-coco-10pct-mask-rcnn-fpn"
    assert record["params"]["engine"] == "torchvision"
    assert {"AP", "AP50", "AP75", "APm", "APm50", "APm75"} <= set(record["metrics"])
    assert all(0.0 <= value <= 100.0 for value in record["metrics"].values())
    params = record["params"]
    assert params["warmup"] == 1 and params["steps"] == [1, 2]  # 1x: 1000 warm-up, 60k / 80k of 90k, scaled
    assert params["min_sizes"] == [round(s * SIZE / 480) for s in range(640, 801, 32)]  # COCO 640-800 scaled


# ---------------------------------------------------------------- Linear Det. (--frozen)


def _voc_model(synth: Path, settings: tv.DetectionSettings):
    data = tv.load_data("voc", synth / "VOC2012")
    geometry = resolve_geometry(settings, data.train)
    return data, geometry


def test_frozen_detection_moves_no_frozen_parameter_or_batchnorm_statistic(synth, tmp_path):
    settings = tv.DetectionSettings(iters=3, batch_size=2, base_lr=0.05, frozen=True, **TINY)
    data, geometry = _voc_model(synth, settings)
    torch.manual_seed(0)
    backbone = resolve_weights("random", "resnet18").build()
    with torch.no_grad():  # BN statistics away from their init, so a reset or an update would show
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    source = {key: value.clone() for key, value in backbone.state_dict().items() if "num_batches" not in key}
    model = build_model(backbone, len(data.class_names), geometry, frozen=True)
    frozen_parts = (model.backbone, model.roi_heads.box_head.res5)
    trained_before = {key: value.clone() for key, value in model.state_dict().items()}
    assert all(not p.requires_grad for part in frozen_parts for p in part.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for part in frozen_parts for m in part.modules())
    engine.train(model, data, settings, torch.device("cpu"), tmp_path / "checkpoint.pth")
    engine.precise_bn(model, data, settings, torch.device("cpu"))
    stages = {"body.0": "conv1", "body.1": "bn1", "body.4": "layer1", "body.5": "layer2", "body.6": "layer3"}
    after = {
        **{stages[".".join(key.split(".")[:2])] + key[len(".".join(key.split(".")[:2])):]: value
           for key, value in model.backbone.state_dict().items()},
        **{f"layer4.{key}": value for key, value in model.roi_heads.box_head.res5.state_dict().items()},
    }  # fmt: skip
    assert set(after) == set(source)
    for key, value in source.items():
        assert torch.equal(after[key], value), f"frozen {key} moved"
    moved = [key for key, value in model.state_dict().items() if not torch.equal(value, trained_before[key])]
    assert any(key.startswith("rpn.") for key in moved)
    assert any("box_predictor" in key for key in moved) and any(".norm.running_mean" in key for key in moved)


def test_frozen_run_records_ap_and_the_linear_det_benchmark(tmp_path, synth):
    config = DetectConfig(dataset="voc", data_root=synth / "VOC2012", engine="torchvision", lrs=(0.02,),
                          iters=2, batch_size=2, settings=tv.DetectionSettings(**TINY),
                          frozen=True)  # fmt: skip
    torch.set_num_threads(1)
    run_protocol(detect, config, resolve_weights("random", "resnet18"), tmp_path / "sweep")
    record = json.loads((tmp_path / "sweep" / "lr=0.02" / "result.json").read_text())
    assert record["protocol"] == "detect-voc-faster-rcnn-c4-frozen" and record["params"]["frozen"] is True
    assert {"AP", "AP50", "AP75"} <= set(record["metrics"])
    events = EventAccumulator(str(tmp_path / "sweep" / "lr=0.02" / "tb"))
    events.Reload()  # the training curve (every iteration) and the record's metrics, for TensorBoard
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
    assert events.Scalars("metrics/AP50")[0].value == pytest.approx(record["metrics"]["AP50"], rel=1e-6)
    with pytest.raises(UserError, match="--frozen"):
        detect.plan(DetectConfig(dataset="coco", data_root=synth / "coco", engine="torchvision", frozen=True),
                    resolve_weights("random", "resnet18"))  # fmt: skip


def test_detectron2_export_for_frozen_sets_the_freeze_options(tmp_path, synth):
    weights = resolve_weights("random", "resnet50")
    config = DetectConfig(dataset="voc", data_root=synth / "VOC2012", frozen=True, num_gpus=1)
    result = detect.export(config, weights, tmp_path / "out")
    assert result.config.name == "voc_R_50_C4_24k_frozen.yaml"
    cfg = yaml.safe_load(result.config.read_text())
    assert cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] == 5 and cfg["MODEL"]["RESNETS"]["NORM"] == "FrozenBN"
    assert cfg["VICREGL"]["FREEZE_RES5"] is True and cfg["VICREGL"]["EXTRA_NORM"] == "naiveSyncBN"
    assert cfg["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    plain = DetectConfig(dataset="voc", data_root=synth / "VOC2012", num_gpus=1)
    fine_tuned = yaml.safe_load(detect.export(plain, weights, tmp_path / "ft").config.read_text())
    assert fine_tuned["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0 and "FREEZE_RES5" not in fine_tuned["VICREGL"]
    assert fine_tuned["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"


# ---------------------------------------------------------------- checkpoint and exact resume


def _train(synth: Path, settings: tv.DetectionSettings, checkpoint: Path) -> dict[str, torch.Tensor]:
    """What engine.run does before PreciseBN: seeded build, then train (resuming `checkpoint`)."""
    data, geometry = _voc_model(synth, settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = engine.build(resolve_weights("random", "resnet18", 0), "voc", data, geometry, settings)
        engine.train(model, data, settings, torch.device("cpu"), checkpoint)
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_torchvision_engine_resumes_to_the_same_weights_after_an_interrupt(monkeypatch, synth, tmp_path):
    torch.set_num_threads(1)
    settings = tv.DetectionSettings(iters=4, batch_size=2, base_lr=0.02, warmup_iters=2, **TINY)
    uninterrupted = _train(synth, settings, tmp_path / "a" / "checkpoint.pth")

    step, iterations = engine._step, []

    def step_and_signal(model, optimizer, batch, iteration, *args):
        iterations.append(iteration)
        if iteration == 1:  # SIGUSR1 arrives during the second step: it finishes, saves, stops
            os.kill(os.getpid(), signal.SIGUSR1)
        return step(model, optimizer, batch, iteration, *args)

    monkeypatch.setattr(engine, "_step", step_and_signal)
    checkpoint = tmp_path / "b" / "checkpoint.pth"
    with pytest.raises(TrainingInterrupted) as stopped:
        _train(synth, settings, checkpoint)
    assert stopped.value.step == 2 and checkpoint.is_file() and iterations == [0, 1]
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 2
    iterations.clear()
    resumed = _train(synth, settings, checkpoint)
    assert iterations == [2, 3]
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    with pytest.raises(UserError, match="other settings"):
        _train(synth, tv.DetectionSettings(**{**vars(settings), "base_lr": 0.01}), checkpoint)
