"""vicregl export: each target's file loads with that target's own loader, and the layouts our reader accepts
read back to the same tensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

import vicregl_cli.commands.export  # noqa: F401 - registers `export` on the app
import vicregl_cli.commands.matches  # noqa: F401 - with export: two commands, so the app is a group
from vicregl_cli.backbones import build_backbone, resolve_weights, save_backbone
from vicregl_cli.commands.app import app
from vicregl_cli.errors import UserError
from vicregl_cli.export import check_target, export_weights, release_state


def _randomised(name: str, seed: int, **options) -> dict[str, torch.Tensor]:
    """A backbone state with every float tensor drawn at random (BN statistics positive), so that a
    misplaced tensor changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):  # shapes only: no time spent on an init that is overwritten
        shapes = build_backbone(name, **options).state_dict()
    for key, value in shapes.items():
        if not value.is_floating_point():
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            fan_in = value[0].numel() if value.ndim > 1 else 1
            state[key] = torch.randn(value.shape, generator=generator) / fan_in**0.5
    return state


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    state = _randomised("resnet50", seed=0)
    save_backbone(path, "resnet50", state)
    return path, state


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("weights") / "convnext_tiny.pth"
    state = _randomised("convnext_tiny", seed=1)
    save_backbone(path, "convnext_tiny", state)
    return path, state


def _export(tmp_path: Path, weights: Path, target: str, name: str) -> Path:
    out = tmp_path / name
    result = CliRunner().invoke(app, ["export", "--weights", str(weights), "--to", target, str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    return out


def test_torchvision_resnet50_loads_with_only_fc_missing_and_gives_our_features(resnet50_file, tmp_path):
    source, state = resnet50_file
    out = _export(tmp_path, source, "torchvision", "tv.pth")
    with torch.device("meta"):  # the file provides every tensor (assign=True): no init needed
        model = torchvision.models.resnet50()
    result = model.load_state_dict(torch.load(out, weights_only=True), strict=False, assign=True)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    model.fc = torch.nn.Identity()
    ours = resolve_weights(source).build().eval()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(image), ours(image)[1], rtol=1e-5, atol=1e-5)
    read_back = resolve_weights(out, "resnet50").state_dict()  # our reader: the writer's inverse
    assert read_back.keys() == state.keys() and all(torch.equal(read_back[k], v) for k, v in state.items())


def test_timm_convnext_tiny_loads_strictly_and_forward_features_is_our_last_stage(convnext_file, tmp_path):
    import timm

    source, _ = convnext_file
    out = _export(tmp_path, source, "timm", "timm.pth")
    with torch.device("meta"):  # the file provides every tensor (assign=True): no init needed
        model = timm.create_model("convnext_tiny", pretrained=False).eval()
    exported = torch.load(out, weights_only=True)
    head = {k: torch.zeros(v.shape) for k, v in model.state_dict().items() if k.startswith("head.fc.")}
    assert sorted(head) == ["head.fc.bias", "head.fc.weight"] and not set(head) & set(exported)
    model.load_state_dict({**exported, **head}, strict=True, assign=True)
    ours = resolve_weights(source).build().eval()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(image), ours.forward_stages(image)[-1], rtol=1e-5, atol=1e-5
        )


def test_release_layout_is_the_official_one(resnet50_file, convnext_file, tmp_path):
    """ResNet: torchvision's keys without fc (the official resnet.py names); ConvNeXt: what timm's converter
    of the official (FB) ConvNeXt checkpoints accepts; both read back by our reader unchanged."""
    from timm import create_model
    from timm.models.convnext import checkpoint_filter_fn

    source, state = resnet50_file
    released = torch.load(_export(tmp_path, source, "vicregl", "r50.pth"), weights_only=True)
    with torch.device("meta"):
        expected = [k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")]
    assert sorted(released) == sorted(expected) and all(torch.equal(released[k], state[k]) for k in state)

    source, state = convnext_file
    out = _export(tmp_path, source, "vicregl", "cnx.pth")
    with torch.device("meta"):
        model = create_model("convnext_tiny", pretrained=False)
    converted = checkpoint_filter_fn(torch.load(out, weights_only=True), model)
    result = model.load_state_dict(converted, strict=False, assign=True)
    gammas = [k for k in result.missing_keys if k.endswith(".gamma")]  # the release has no layer scale
    assert sorted(set(result.missing_keys) - set(gammas)) == ["head.fc.bias", "head.fc.weight"]
    assert result.unexpected_keys == []
    read_back = resolve_weights(out, "convnext_tiny").state_dict()
    assert read_back.keys() == state.keys() and all(torch.equal(read_back[k], v) for k, v in state.items())


def test_release_folds_layer_scale_into_the_block_it_scales():
    state = _randomised("convnext_tiny", seed=4, layer_scale_init_value=1e-6)
    with torch.device("meta"):
        with_scale = build_backbone("convnext_tiny", layer_scale_init_value=1e-6)
        folded = build_backbone("convnext_tiny")
    with_scale.load_state_dict(state, assign=True)
    folded.load_state_dict(release_state("convnext_tiny", state), strict=True, assign=True)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, actual = with_scale.eval()(image)[0], folded.eval()(image)[0]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_mmseg_file_loads_through_mmengine_and_the_project_backbone(tmp_path):
    from mmengine.runner import load_checkpoint

    from vicregl_cli.transfer.mmseg_models import VICRegLBackbone

    source = tmp_path / "small.pth"
    state = _randomised("resnet10_small_w16", seed=6)
    save_backbone(source, "resnet10_small_w16", state)
    out = _export(tmp_path, source, "mmseg", "mmseg.pth")
    stored = torch.load(out, weights_only=True)
    assert sorted(stored) == sorted(f"backbone.{k}" for k in state)  # no {"model": ...} wrapper

    trunk = build_backbone("resnet10_small_w16")
    load_checkpoint(trunk, str(out), strict=True, revise_keys=[(r"^backbone\.", "")])
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in state.items())
    init_cfg = dict(type="Pretrained", checkpoint=str(out), prefix="backbone.")
    wrapped = VICRegLBackbone("resnet10_small_w16", output_stride=8, init_cfg=init_cfg)
    wrapped.init_weights()
    assert all(torch.equal(wrapped.state_dict()[k], v) for k, v in state.items())
    read_back = resolve_weights(out, "resnet10_small_w16").state_dict()
    assert all(torch.equal(read_back[k], v) for k, v in state.items())


def _norm(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    """detectron2's FrozenBatchNorm2d tensors under `prefix.norm`."""
    return {f"{prefix}.norm.{leaf}": (width,) for leaf in ("weight", "bias", "running_mean", "running_var")}


def _detectron2_r50_shapes() -> dict[str, tuple[int, ...]]:
    """The key names and shapes of detectron2's R50 (BasicStem + res2..res5 BottleneckBlocks, FrozenBN as
    `.norm`), from its architecture: 3, 4, 6, 3 blocks, bottleneck widths 64..512, outputs 4 x that."""
    shapes = {"stem.conv1.weight": (64, 3, 7, 7), **_norm("stem.conv1", 64)}
    in_channels = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=2):
        for block in range(blocks):
            prefix = f"res{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, in_channels, 1, 1)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"{prefix}.conv3.weight"] = (4 * width, width, 1, 1)
            shapes.update({**_norm(f"{prefix}.conv1", width), **_norm(f"{prefix}.conv2", width)})
            shapes.update(_norm(f"{prefix}.conv3", 4 * width))
            if block == 0:
                shapes[f"{prefix}.shortcut.weight"] = (4 * width, in_channels, 1, 1)
                shapes.update(_norm(f"{prefix}.shortcut", 4 * width))
            in_channels = 4 * width
    return shapes


def test_detectron2_pkl_has_the_model_zoo_names_shapes_and_values(resnet50_file, tmp_path):
    source, state = resnet50_file
    out = _export(tmp_path, source, "detectron2", "r50.pkl")
    with open(out, "rb") as handle:
        payload = pickle.load(handle)
    assert payload["matching_heuristics"] is True and set(payload) == {
        "model",
        "__author__",
        "matching_heuristics",
    }
    model = payload["model"]
    assert {key: tuple(value.shape) for key, value in model.items()} == _detectron2_r50_shapes()
    assert (
        model["res3.0.shortcut.norm.running_var"] == state["layer2.0.downsample.1.running_var"].numpy()
    ).all()
    assert (model["res5.2.conv2.weight"] == state["layer4.2.conv2.weight"].numpy()).all()
    assert (model["stem.conv1.norm.bias"] == state["bn1.bias"].numpy()).all()


def test_targets_that_cannot_hold_a_backbone_fail_before_any_file_is_read(tmp_path):
    with pytest.raises(UserError, match="--to 'onnx'"):
        check_target("onnx", None)
    with pytest.raises(UserError, match="torchvision has no convnext_tiny"):
        check_target("torchvision", "convnext_tiny")
    with pytest.raises(UserError, match="resnet18_small does not export"):
        check_target("detectron2", "resnet18_small")
    with pytest.raises(UserError, match="timm has no resnet50x2"):
        export_weights(resolve_weights("random", "resnet50x2"), "timm", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    result = CliRunner().invoke(app, ["export", "--weights", str(tmp_path / "none.pth"), "--to", "torch",
                                      str(tmp_path / "y.pth")])  # fmt: skip
    assert isinstance(result.exception, UserError) and "--to 'torch'" in str(result.exception)
    arguments = ["--weights", "random", "--backbone", "resnet18", "--to", "vicregl", "--dry-run"]
    dry = CliRunner().invoke(app, ["export", *arguments, str(tmp_path / "z.pth")])
    assert dry.exit_code == 0 and "nothing written" in dry.output and not (tmp_path / "z.pth").exists()
