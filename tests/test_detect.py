"""vicregl detect: the plan of both engines, detectron2 export (.pkl + configs) and run point, the launcher's
registrations and the torchvision C4 engine's schedule, sizes and losses (its metrics and a two-iteration run:
test_voc_metric.py)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn
from yacs.config import CfgNode

from vicregl_cli.backbones import weights as weights_module
from vicregl_cli.backbones.weights import resolve_weights
from vicregl_cli.errors import UserError
from vicregl_cli.transfer import detect, detectron2_run
from vicregl_cli.transfer import detectron2_config as d2_config
from vicregl_cli.transfer import detectron2_train as launcher
from vicregl_cli.transfer import tv_detection as tv
from vicregl_cli.transfer.detect import DetectConfig
from vicregl_cli.transfer.tv_detection import data as tv_data
from vicregl_cli.transfer.tv_detection import engine as tv_engine
from vicregl_cli.transfer.tv_detection import geometry as tv_geometry
from vicregl_cli.transfer.tv_detection.model import DetectronRPN

REPO = Path(__file__).resolve().parents[1]
R50_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}
BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def expected_r50_keys() -> set[str]:
    """detectron2's ResNet-50 parameter names, written out from its naming scheme."""
    keys = {"stem.conv1.weight", *(f"stem.conv1.norm.{leaf}" for leaf in BN_LEAVES)}
    for stage, blocks in R50_BLOCKS.items():
        for block in range(blocks):
            for conv in (1, 2, 3):
                keys.add(f"res{stage}.{block}.conv{conv}.weight")
                keys.update(f"res{stage}.{block}.conv{conv}.norm.{leaf}" for leaf in BN_LEAVES)
        keys.add(f"res{stage}.0.shortcut.weight")
        keys.update(f"res{stage}.0.shortcut.norm.{leaf}" for leaf in BN_LEAVES)
    return keys


def torchvision_key(detectron2_key: str) -> str:
    """Inverse naming, for comparing values: detectron2 key -> torchvision key."""
    if detectron2_key.startswith("stem.conv1.norm."):
        return "bn1." + detectron2_key.rsplit(".", 1)[1]
    if detectron2_key.startswith("stem."):
        return detectron2_key[len("stem.") :]
    stage, rest = detectron2_key.split(".", 1)
    rest = rest.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    for conv in (1, 2, 3):
        rest = rest.replace(f"conv{conv}.norm.", f"bn{conv}.")
    return f"layer{int(stage[3:]) - 1}.{rest}"


@pytest.fixture(scope="module")
def tv_resnet50(tmp_path_factory) -> tuple[dict, Path]:
    """A torchvision ResNet-50 state dict (no stored backbone name) and the file it was saved to."""
    import torchvision

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    source = torchvision.models.resnet50().state_dict()
    for value in source.values():  # every tensor (BN statistics too) away from its init value
        if value.is_floating_point():
            value.copy_(torch.randn_like(value))
    torch.save(source, folder / "tv_resnet50.pth")
    return source, folder / "tv_resnet50.pth"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_voc, tv_resnet50):
    source, path = tv_resnet50
    weights = resolve_weights(path, "resnet50")
    result = detect.export(DetectConfig(dataset="voc", data_root=synthetic_voc), weights,
                           tmp_path_factory.mktemp("export") / "out")  # fmt: skip
    return source, result


def test_export_pkl_is_model_zoo_format_with_r50_names_and_source_values(exported):
    source, result = exported
    with open(result.weights, "rb") as handle:
        payload = pickle.load(handle)
    assert payload["matching_heuristics"] is True and "__author__" in payload
    model = payload["model"]
    assert set(model) == expected_r50_keys()
    assert all(isinstance(value, np.ndarray) for value in model.values())
    for key, value in model.items():
        np.testing.assert_array_equal(value, source[torchvision_key(key)].numpy(), err_msg=key)
    assert "detectron2" not in sys.modules


def test_export_reads_the_weights_file_once_in_total(monkeypatch, tmp_path, synthetic_voc, tv_resnet50):
    reads = mock.Mock(wraps=weights_module.read_weights_file)  # counts calls, returns what the reader does
    monkeypatch.setattr(weights_module, "read_weights_file", reads)
    weights = resolve_weights(tv_resnet50[1], "resnet50")
    config = DetectConfig(dataset="voc", data_root=synthetic_voc, lrs=(0.01,))
    result = detect.export(config, weights, tmp_path)
    assert reads.call_count == 1 and Path(reads.call_args.args[0]) == tv_resnet50[1]
    assert result.weights.is_file() and result.num_tensors == len(expected_r50_keys())
    with pytest.raises(UserError, match="at most one --lr"):
        detect.export(replace(config, lrs=(0.1, 0.2)), weights, tmp_path)


def test_exported_config_parses_with_yacs_and_names_registered_head_and_datasets(exported, synthetic_voc):
    _, result = exported
    with open(result.config) as handle:
        cfg = CfgNode.load_cfg(handle)
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" == d2_config.EXTRA_NORM_HEAD
    assert cfg.MODEL.WEIGHTS == str(result.weights.resolve())
    classes = (synthetic_voc / "classes.txt").read_text().split()
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(classes) and list(cfg.VICREGL.CLASS_NAMES) == classes
    assert list(cfg.DATASETS.TRAIN) == ["vicregl_voc_train"]
    assert list(cfg.DATASETS.TEST) == ["vicregl_voc_val"]
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert list(cfg.SOLVER.STEPS) == [18000, 22000] and cfg.SOLVER.MAX_ITER == 24000
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == list(range(480, 801, 32)) and cfg.MODEL.BACKBONE.FREEZE_AT == 0


def test_kept_configs_match_generator_and_parse(tmp_path):
    templates = d2_config.template_configs()
    kept = sorted(path.name for path in d2_config.template_folder().glob("*.yaml"))
    assert kept == sorted(templates)
    for name, config in templates.items():
        with open(d2_config.template_folder() / name) as handle:
            cfg = CfgNode.load_cfg(handle)
        assert cfg == CfgNode(config), name
        fresh = d2_config.write_config(tmp_path / name, config).read_text()
        assert fresh == (d2_config.template_folder() / name).read_text(), f"{name} is stale: regenerate it"
    voc = templates["voc0712_R_50_C4_24k.yaml"]
    assert voc["DATASETS"]["TRAIN"] + voc["DATASETS"]["TEST"] == list(launcher.VOC_SPLITS)
    assert templates["coco_10pct_R_50_FPN_1x.yaml"]["DATASETS"]["TRAIN"] == ["vicregl_coco_2017_train_10pct"]
    assert templates["coco_R_50_C4_1x.yaml"]["MODEL"]["MASK_ON"] is True


def test_iters_rescale_the_schedule():
    config = d2_config.build_config("voc_R_50_C4_24k", dataset="voc0712", data_root="d", weights="w",
                                    iters=2400, batch_size=8)  # fmt: skip
    assert config["SOLVER"]["STEPS"] == [1800, 2200] and config["SOLVER"]["BASE_LR"] == pytest.approx(0.01)
    with pytest.raises(UserError, match="no detectron2 counterpart"):
        d2_config.build_config(
            "voc_R_50_C4_24k", dataset="voc", data_root="d", weights="w", backbone_name="resnet18"
        )


def _install_fake_detectron2(monkeypatch) -> dict:
    """Just enough of detectron2's registries to run the launcher's registration code."""
    catalog: dict = {}
    metadata: dict = {}

    class Registry(dict):
        def register(self, obj):
            self[obj.__name__] = obj
            return obj

    roi_registry = Registry()

    class Res5ROIHeads(nn.Module):
        def __init__(self, cfg, input_shape):
            super().__init__()
            last = nn.Conv2d(4, 8, 1)
            last.out_channels = 8
            self.res5 = nn.Sequential(nn.Conv2d(3, 4, 1), last)

    catalog_api = types.SimpleNamespace(register=catalog.__setitem__, list=lambda: list(catalog))
    metadata_api = types.SimpleNamespace(get=lambda name: metadata.setdefault(
        name, types.SimpleNamespace(set=lambda **kw: metadata[name].__dict__.update(kw))))  # fmt: skip

    modules = {
        "detectron2": types.ModuleType("detectron2"),
        "detectron2.layers": types.SimpleNamespace(get_norm=lambda norm, channels: nn.BatchNorm2d(channels)),
        "detectron2.modeling": types.ModuleType("detectron2.modeling"),
        "detectron2.modeling.roi_heads": types.SimpleNamespace(
            ROI_HEADS_REGISTRY=roi_registry, Res5ROIHeads=Res5ROIHeads
        ),
        "detectron2.data": types.SimpleNamespace(DatasetCatalog=catalog_api, MetadataCatalog=metadata_api),
        "detectron2.structures": types.SimpleNamespace(BoxMode=types.SimpleNamespace(XYXY_ABS="XYXY_ABS")),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return {"roi": roi_registry, "catalog": catalog, "metadata": metadata}


def test_launcher_registers_extra_norm_head_and_voc_datasets(monkeypatch, exported, synthetic_voc):
    fake = _install_fake_detectron2(monkeypatch)
    _, result = exported
    launcher.register_extra_norm_head()
    head_class = fake["roi"][d2_config.EXTRA_NORM_HEAD]
    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(RESNETS=types.SimpleNamespace(NORM="BN")),
                                VICREGL=types.SimpleNamespace(FREEZE_RES5=False, EXTRA_NORM=""))  # fmt: skip
    head = head_class(cfg, None)
    assert list(head.res5._modules) == ["0", "1", "norm"] and head.res5.norm.num_features == 8

    overrides = ["VICREGL.DATA_ROOT", "/data/VOC", "SOLVER.BASE_LR", "1"]
    moved = launcher.read_dataset_section(str(result.config), overrides)
    assert moved["DATA_ROOT"] == "/data/VOC" and moved["DATASET"] == "voc"
    launcher.register_datasets(launcher.read_dataset_section(str(result.config)))
    assert sorted(fake["catalog"]) == ["vicregl_voc_train", "vicregl_voc_val"]
    meta = fake["metadata"]["vicregl_voc_val"]
    assert meta.split == "val" and meta.year == 2007 and Path(meta.dirname) == synthetic_voc
    records = fake["catalog"]["vicregl_voc_train"]()
    assert len(records) == 12
    first = records[0]
    assert Path(first["file_name"]).is_file() and first["annotations"]
    xml = (synthetic_voc / "Annotations" / f"{first['image_id']}.xml").read_text()
    xmin = int(xml.split("<xmin>")[1].split("<")[0])
    assert first["annotations"][0]["bbox"][0] == xmin - 1  # VOC's 1-based xmin -> pixel edge, as detectron2


def test_launcher_arguments_and_missing_detectron2(tmp_path, exported):
    _, result = exported
    args = launcher.parse_args(["--config", str(result.config), "--num-gpus", "8", "SOLVER.BASE_LR", "0.01"])
    assert args.num_gpus == 8 and args.opts == ["SOLVER.BASE_LR", "0.01"] and not args.eval_only
    with pytest.raises(SystemExit):
        launcher.parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit):
        launcher.parse_args(["--config", str(result.config), "SOLVER.BASE_LR"])
    if detectron2_run.detectron2_importable():
        pytest.skip("detectron2 is installed here")
    completed = subprocess.run(
        [sys.executable, "-m", "vicregl_cli.transfer.detectron2_train", "--config", str(result.config)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.strip() == f"error: {launcher.DETECTRON2_MISSING}"


def _plan(monkeypatch, synthetic_voc, engine: str | None, importable: bool, **fields) -> list:
    monkeypatch.setattr(detectron2_run, "detectron2_importable", lambda: importable)
    config = DetectConfig(dataset="voc", data_root=synthetic_voc, engine=engine, **fields)
    return detect.plan(config, resolve_weights("random", "resnet50"))


def test_plan_names_the_benchmark_the_same_on_both_engines(monkeypatch, synthetic_voc):
    fields = {"lrs": (0.02, 0.01), "iters": 2400, "batch_size": 8}
    on_d2 = _plan(monkeypatch, synthetic_voc, "detectron2", True, **fields)
    on_tv = _plan(monkeypatch, synthetic_voc, "torchvision", True, **fields)
    assert [p.name for p in on_d2] == [p.name for p in on_tv] == ["lr=0.02", "lr=0.01"]
    for d2_point, tv_point in zip(on_d2, on_tv, strict=True):
        assert d2_point.protocol == tv_point.protocol == "detect-voc-faster-rcnn-c4"
        assert d2_point.dataset == tv_point.dataset == f"voc:{synthetic_voc.resolve()}"
        shared = {key: d2_point.params[key] for key in ("lr", "iters", "batch_size", "warmup")}
        assert shared == {key: tv_point.params[key] for key in shared}
        assert list(d2_point.params["steps"]) == list(tv_point.params["steps"]) == [1800, 2200]
        assert (d2_point.params["engine"], tv_point.params["engine"]) == ("detectron2", "torchvision")
        assert tv_point.params["min_sizes"] and d2_point.task.engine == "detectron2"
    default = _plan(monkeypatch, synthetic_voc, "detectron2", True, batch_size=8)
    assert [p.params["lr"] for p in default] == [pytest.approx(0.01)] and default[0].params["iters"] == 24000
    assert "detectron2" not in sys.modules


def test_engine_choice_and_its_checks(monkeypatch, capsys, synthetic_voc, tmp_path):
    points = _plan(monkeypatch, synthetic_voc, None, False)
    assert points[0].params["engine"] == "torchvision"
    assert "detectron2 is not installed" in capsys.readouterr().err
    assert _plan(monkeypatch, synthetic_voc, None, True)[0].params["engine"] == "detectron2"
    with pytest.raises(UserError, match="--engine detectron2: detectron2 is not installed"):
        _plan(monkeypatch, synthetic_voc, "detectron2", False)
    with pytest.raises(UserError, match="choose detectron2 or torchvision"):
        _plan(monkeypatch, synthetic_voc, "mmdet", True)
    with pytest.raises(UserError, match="no detectron2 counterpart"):
        detect.plan(DetectConfig(dataset="voc", data_root=synthetic_voc, engine="detectron2"),
                    resolve_weights("random", "resnet18"))  # fmt: skip
    coco = DetectConfig(dataset="coco", data_root=tmp_path, engine="torchvision")
    with pytest.raises(UserError, match="not a COCO 2017 root"):
        detect.plan(coco, resolve_weights("random", "resnet50"))
    with pytest.raises(UserError, match="not a COCO 2017 root"):
        detect.plan(replace(coco, engine="detectron2"), resolve_weights("random", "resnet50"))
    with pytest.raises(UserError, match="unknown detection dataset"):
        detect.plan(replace(coco, dataset="kitti"), resolve_weights("random", "resnet50"))


def test_detectron2_run_point_writes_its_files_and_reads_metrics_back(monkeypatch, synthetic_voc, tmp_path):
    point = replace(_plan(monkeypatch, synthetic_voc, "detectron2", True, lrs=(0.02,))[0],
                    folder=tmp_path / "lr=0.02")  # fmt: skip
    launched = []

    def fake_launcher(command, check):
        launched.append(command)
        lines = [
            {"iteration": 9, "total_loss": 1.5},
            {"bbox/AP": 50.0, "bbox/AP50": 70.0, "bbox/AP75": 40.0, "bbox/APs": float("nan"),
             "bbox/APm": 45.0, "segm/AP": 30.0, "segm/AP50": 60.0},
        ]
        (point.folder / "metrics.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    monkeypatch.setattr(detectron2_run.subprocess, "run", fake_launcher)
    metrics = detect.run_point(point)
    config = point.folder / "config.yaml"
    assert launched == [detectron2_run.launch_command(config, detect.visible_gpus())]  # default: GPUs seen
    assert launched[0][-1] == "--resume"  # a requeued job continues from detectron2's last checkpoint
    # NaN (no small objects) left out; box AP-medium and mask AP under names that cannot collide
    assert metrics == {"AP": 50.0, "AP50": 70.0, "AP75": 40.0, "AP_medium": 45.0, "APm": 30.0, "APm50": 60.0}
    with open(config) as handle:
        cfg = CfgNode.load_cfg(handle)
    assert cfg.SOLVER.BASE_LR == 0.02 and cfg.OUTPUT_DIR == str(point.folder.resolve())
    assert cfg.MODEL.WEIGHTS == str((point.folder / "backbone.pkl").resolve())
    with open(point.folder / "backbone.pkl", "rb") as handle:
        assert set(pickle.load(handle)["model"]) == expected_r50_keys()


def test_coco_subset_is_deterministic_fraction():
    records = [{"image_id": i} for i in range(200, 0, -1)]
    subset = launcher.coco_subset(records, 0.1, seed=0)
    assert len(subset) == 20 and subset == launcher.coco_subset(list(reversed(records)), 0.1, seed=0)
    assert len({record["image_id"] for record in subset}) == 20


def test_warmup_and_steps_follow_detectron2():
    settings = tv.DetectionSettings(iters=24000, batch_size=16)
    assert settings.lr == pytest.approx(0.02) and settings.steps() == (18000, 22000)
    assert settings.warmup() == 100
    assert tv_engine.lr_factor(0, settings) == pytest.approx(0.001)
    assert tv_engine.lr_factor(50, settings) == pytest.approx(0.001 * 0.5 + 0.5)
    assert tv_engine.lr_factor(100, settings) == 1.0 and tv_engine.lr_factor(17999, settings) == 1.0
    assert tv_engine.lr_factor(18000, settings) == pytest.approx(0.1)
    assert tv_engine.lr_factor(23999, settings) == pytest.approx(0.01)
    short = tv.DetectionSettings(iters=100, batch_size=4)
    assert short.lr == pytest.approx(0.005) and short.steps() == (75, 92) and short.warmup() == 10


def test_sizes_and_budgets_scale_only_for_small_images():
    photo = tv_data.Sample("x", Path("x.jpg"), 500, 375, np.zeros((1, 4)), np.zeros(1), np.zeros(1, bool))
    geometry = tv_geometry.resolve_geometry(tv.DetectionSettings(), [photo])
    assert geometry.min_sizes == tuple(range(480, 801, 32)) and geometry.test_size == 800
    budgets = (geometry.rois_per_image, geometry.rpn_batch_per_image, geometry.proposals_test)
    assert budgets == (512, 256, 1000)
    tiny = tv_data.Sample("x", Path("x.jpg"), 75, 75, np.zeros((1, 4)), np.zeros(1), np.zeros(1, bool))
    geometry = tv_geometry.resolve_geometry(tv.DetectionSettings(rois_per_image=7), [tiny])
    assert geometry.scale == pytest.approx(0.2) and geometry.test_size == 160 and geometry.min_sizes[0] == 96
    assert geometry.rois_per_image == 7 and geometry.rpn_batch_per_image == round(256 * 0.04)


def test_bad_inputs_fail_clearly(tmp_path, synthetic_voc):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(UserError, match="Annotations, ImageSets/Main"):
        tv.load_data("voc", tmp_path)
    bad = tmp_path / "bad"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (bad / sub).mkdir(parents=True)
    (bad / "ImageSets/Main/train.txt").write_text("a\n")
    xml = sorted((synthetic_voc / "Annotations").glob("*.xml"))[0].read_text()
    name = xml.split("<name>")[1].split("<")[0]
    (bad / "Annotations/a.xml").write_text(xml.replace(f"<name>{name}</name>", "<name>dragon</name>"))
    with pytest.raises(UserError, match="dragon"):
        tv_data.read_voc_split(bad, "train", ["cat"])
    with pytest.raises(UserError, match="not a ResNet"):
        detect.plan(DetectConfig(dataset="voc", data_root=synthetic_voc, engine="torchvision"),
                    resolve_weights("random", "convnext_tiny"))  # fmt: skip
    with pytest.raises(UserError, match="not a COCO 2017 root"):
        tv.load_data("coco", tmp_path)


def test_rpn_loss_is_detectron2s_sum_over_anchor_budget():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    anchors = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),))
    rpn = DetectronRPN(anchors, RPNHead(4, 1), 0.7, 0.3, batch_size_per_image=8, positive_fraction=1.0,
                       pre_nms_top_n={"training": 10, "testing": 10},
                       post_nms_top_n={"training": 10, "testing": 10}, nms_thresh=0.7)  # fmt: skip
    labels = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])]  # -1: ignored anchor
    logits = torch.tensor([2.0, -1.0, 5.0, 0.5, 1.0, -3.0])
    deltas = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 10
    targets = [torch.zeros(3, 4), torch.ones(3, 4)]
    objectness, box = rpn.compute_loss(logits, deltas, labels, targets)
    budget = 8 * 2  # detectron2 divides by batch_size_per_image x images, not by the sampled count
    used = [0, 1, 3, 4, 5]
    flat_labels = torch.cat(labels)
    expected_bce = sum(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits[i], flat_labels[i])) for i in used
    )
    flat_targets = torch.cat(targets)
    expected_l1 = sum(float((deltas[i] - flat_targets[i]).abs().sum()) for i in (0, 4, 5))
    assert float(objectness) == pytest.approx(expected_bce / budget, rel=1e-6)
    assert float(box) == pytest.approx(expected_l1 / budget, rel=1e-6)


def test_slurm_jobs_run_one_task_that_launches_the_gpus_and_torchvision_takes_one_gpu(
    monkeypatch, synthetic_voc, tmp_path
):
    from typer.testing import CliRunner

    from vicregl_cli.cli import app

    base = ["detect", "--weights", "random", "--backbone", "resnet50", "--dataset", "voc", "--data-root",
            str(synthetic_voc), "--out", str(tmp_path / "out"), "--slurm", "--partition", "gpu", "--dry-run"]
    monkeypatch.setattr(detectron2_run, "detectron2_importable", lambda: True)
    result = CliRunner().invoke(app, [*base, "--engine", "detectron2", "--gpus-per-node", "8"],
                                terminal_width=300)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "'gpus_per_node': 8" in result.output and "'tasks_per_node': 1" in result.output
    result = CliRunner().invoke(app, [*base, "--engine", "torchvision", "--gpus-per-node", "8"])
    assert isinstance(result.exception, UserError) and "trains on one GPU, not 8" in str(result.exception)
    result = CliRunner().invoke(app, [*base, "--engine", "torchvision", "--nodes", "2"])
    assert isinstance(result.exception, UserError) and "one node per job" in str(result.exception)
    assert not (tmp_path / "out").exists()
