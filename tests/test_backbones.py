"""Backbone registry and loader: shapes, parameter counts, torchvision / official ConvNeXt parity, formats."""

from __future__ import annotations

import hashlib
import warnings
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from typer.testing import CliRunner

from vicregl_cli.backbones import (
    BACKBONES,
    build_backbone,
    get_spec,
    load_backbone,
    parameter_count,
    read_backbone_state,
    save_backbone,
    weights_sha256,
)
from vicregl_cli.cli import app
from vicregl_cli.errors import UserError

ALL_NAMES = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50x2", "resnet50x4", "resnet50x5",
    "resnet200x2", "resnet18_small", "resnet34_small", "resnet50_small", "resnet10_small_w16",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge",
]  # fmt: skip
# 3 x 3 stride-1 stem, no max-pool
SMALL_STEM = {"resnet18_small", "resnet34_small", "resnet50_small", "resnet10_small_w16"}
# Built for real (random init + a real forward); the others are built and run on the `meta` device, which
# checks the same module graph and output shapes without allocating their 40-375 M parameters.
REAL_BUILDS = {"resnet18", "resnet34", "resnet50", "convnext_tiny", "resnet18_small", "resnet10_small_w16"}

# Independent description of each entry: (block, blocks per stage, widen) / (blocks per stage, first width).
RESNET_LAYOUT = {
    "resnet18": ("basic", (2, 2, 2, 2), 1),
    "resnet34": ("basic", (3, 4, 6, 3), 1),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1),
    "resnet50x2": ("bottleneck", (3, 4, 6, 3), 2),
    "resnet50x4": ("bottleneck", (3, 4, 6, 3), 4),
    "resnet50x5": ("bottleneck", (3, 4, 6, 3), 5),
    "resnet200x2": ("bottleneck", (3, 24, 36, 3), 2),
    "resnet18_small": ("basic", (2, 2, 2, 2), 1),
    "resnet34_small": ("basic", (3, 4, 6, 3), 1),
    "resnet50_small": ("bottleneck", (3, 4, 6, 3), 1),
    "resnet10_small_w16": ("basic", (1, 1, 1, 1), 0.25),  # 16 channels after the stem
}
CONVNEXT_LAYOUT = {
    "convnext_tiny": ((3, 3, 9, 3), 96),
    "convnext_small": ((3, 3, 27, 3), 96),
    "convnext_base": ((3, 3, 27, 3), 128),
    "convnext_large": ((3, 3, 27, 3), 192),
    "convnext_xlarge": ((3, 3, 27, 3), 256),
}


def resnet_parameters(block: str, layers: tuple[int, ...], widen: int, stem_kernel: int = 7) -> int:
    """Parameters of a ResNet trunk, every convolution width multiplied by `widen` (BN: weight + bias)."""
    stem = round(64 * widen)
    total = 3 * stem_kernel**2 * stem + 2 * stem
    in_channels = stem
    for stage, blocks in enumerate(layers):
        planes = stem * 2**stage
        out = planes * (4 if block == "bottleneck" else 1)
        for index in range(blocks):
            if block == "bottleneck":
                total += in_channels * planes + 9 * planes * planes + planes * out + 2 * (2 * planes + out)
            else:
                total += 9 * in_channels * planes + 9 * planes * planes + 4 * planes
            if index == 0 and (stage > 0 or in_channels != out):
                total += in_channels * out + 2 * out
            in_channels = out
    return total


def convnext_parameters(depths: tuple[int, ...], first_width: int) -> int:
    """Parameters of a ConvNeXt without head: stem, 3 downsamplings, blocks, final LayerNorm."""
    dims = [first_width * 2**i for i in range(4)]
    total = 3 * 16 * dims[0] + dims[0] + 2 * dims[0]
    for i in range(3):
        total += 2 * dims[i] + 4 * dims[i] * dims[i + 1] + dims[i + 1]
    for dim, depth in zip(dims, depths, strict=True):
        total += depth * ((49 * dim + dim) + 2 * dim + (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim))
    return total + 2 * dims[-1]


def expected_widths(name: str) -> tuple[int, ...]:
    if name in RESNET_LAYOUT:
        block, _, widen = RESNET_LAYOUT[name]
        return tuple(round(64 * widen) * (4 if block == "bottleneck" else 1) * 2**i for i in range(4))
    return tuple(CONVNEXT_LAYOUT[name][1] * 2**i for i in range(4))


def test_registry_holds_the_18_entries_with_their_widths():
    assert list(BACKBONES) == ALL_NAMES
    for name in ALL_NAMES:
        spec = get_spec(name)
        assert spec.stage_widths == expected_widths(name)
        assert spec.representation_size == spec.stage_widths[-1]
        assert spec.output_stride == (8 if name in SMALL_STEM else 32)
        family_and_norm = ("resnet", "batch") if name in RESNET_LAYOUT else ("convnext", "layer")
        assert (spec.family, spec.norm) == family_and_norm
    assert get_spec("resnet50x2").representation_size == 4096


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_entry_builds_and_returns_the_right_shapes_at_64(name):
    device = "cpu" if name in REAL_BUILDS else "meta"
    with torch.device(device):
        model = build_backbone(name)
        images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        feature_map, pooled = model(images)
        stages = model.forward_stages(images)
    widths = expected_widths(name)
    first = 64 if name in SMALL_STEM else 16  # strides 1, 2, 4, 8 with the small stem; 4 ... 32 otherwise
    assert model.spec == get_spec(name)
    assert feature_map.shape == (2, widths[-1], first // 8, first // 8)
    assert pooled.shape == (2, widths[-1])
    expected_stages = [(2, width, first // 2**i, first // 2**i) for i, width in enumerate(widths)]
    assert [tuple(stage.shape) for stage in stages] == expected_stages
    if device == "cpu":
        torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))
        assert torch.isfinite(feature_map).all()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parameter_counts_match_an_analytic_count(name):
    if name in RESNET_LAYOUT:
        expected = resnet_parameters(*RESNET_LAYOUT[name], stem_kernel=3 if name in SMALL_STEM else 7)
    else:
        expected = convnext_parameters(*CONVNEXT_LAYOUT[name])
    assert parameter_count(name) == expected


@pytest.mark.parametrize(
    ("name", "published_millions"),
    # ResNet-50 25.557 M minus its fc (2048·1000 + 1000); ConvNeXt-S 50.22 M minus its head (768·1000 + 1000);
    # SimCLR / BYOL tables: R50 (2×) 94 M, R50 (4×) 375 M, R200 (2×) 250 M.
    [
        ("resnet50", 23.5),
        ("convnext_small", 49.5),
        ("resnet50x2", 94),
        ("resnet50x4", 375),
        ("resnet200x2", 250),
    ],
)
def test_parameter_counts_match_published_figures_within_1_percent(name, published_millions):
    assert abs(parameter_count(name) / 1e6 - published_millions) / published_millions < 0.01


def test_resnet50_matches_torchvision_keys_weights_and_outputs(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    path = tmp_path / "torchvision_resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = load_backbone("resnet50", path).eval()
    expected_keys = [key for key in reference.state_dict() if not key.startswith("fc.")]
    assert list(model.state_dict()) == expected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        reference_map = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        feature_map, pooled = model(images)
    torch.testing.assert_close(feature_map, reference_map)
    torch.testing.assert_close(pooled, torch.flatten(reference.avgpool(reference_map), 1))


def test_wide_resnet_widens_the_stem_and_every_convolution():
    with torch.device("meta"):
        model = build_backbone("resnet50x2")
    assert model.conv1.out_channels == 128
    assert model.layer1[0].conv2.out_channels == 128
    assert model.layer4[0].conv3.out_channels == 4096


@cache
def official_convnext_tiny_state(layer_scale: bool = False) -> dict[str, torch.Tensor]:
    """A random state dict with the official ConvNeXt-T names and shapes, written out by hand (read-only)."""
    generator = torch.Generator().manual_seed(1)
    dims, depths = [96, 192, 384, 768], [3, 3, 9, 3]
    shapes = {
        "downsample_layers.0.0.weight": (96, 3, 4, 4),
        "downsample_layers.0.0.bias": (96,),
        "downsample_layers.0.1.weight": (96,),
        "downsample_layers.0.1.bias": (96,),
    }
    for i in range(1, 4):
        shapes[f"downsample_layers.{i}.0.weight"] = (dims[i - 1],)
        shapes[f"downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        shapes[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        shapes[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for stage, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        for block in range(depth):
            prefix = f"stages.{stage}.{block}."
            if layer_scale:
                shapes[prefix + "gamma"] = (dim,)
            shapes.update(
                {
                    prefix + "dwconv.weight": (dim, 1, 7, 7),
                    prefix + "dwconv.bias": (dim,),
                    prefix + "norm.weight": (dim,),
                    prefix + "norm.bias": (dim,),
                    prefix + "pwconv1.weight": (4 * dim, dim),
                    prefix + "pwconv1.bias": (4 * dim,),
                    prefix + "pwconv2.weight": (dim, 4 * dim),
                    prefix + "pwconv2.bias": (dim,),
                }
            )
    shapes["norm.weight"] = (768,)
    shapes["norm.bias"] = (768,)
    state = {key: 0.05 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 1:  # LayerNorm scales near 1, as trained ones are
            state[key] = value + 1.0
    return state


def reference_convnext_forward(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The official ConvNeXt forward (eval: no drop path) in functional ops; returns the final-norm map."""

    def channels_first_norm(x, prefix):
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + 1e-6)
        return state[prefix + "weight"][:, None, None] * x + state[prefix + "bias"][:, None, None]

    x = F.conv2d(images, state["downsample_layers.0.0.weight"], state["downsample_layers.0.0.bias"], stride=4)
    x = channels_first_norm(x, "downsample_layers.0.1.")
    for stage, depth in enumerate([3, 3, 9, 3]):
        if stage > 0:
            x = channels_first_norm(x, f"downsample_layers.{stage}.0.")
            conv = f"downsample_layers.{stage}.1."
            x = F.conv2d(x, state[conv + "weight"], state[conv + "bias"], stride=2)
        for block in range(depth):
            p = f"stages.{stage}.{block}."
            y = F.conv2d(x, state[p + "dwconv.weight"], state[p + "dwconv.bias"], padding=3, groups=x.size(1))
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, (y.shape[-1],), state[p + "norm.weight"], state[p + "norm.bias"], 1e-6)
            y = F.linear(F.gelu(F.linear(y, state[p + "pwconv1.weight"], state[p + "pwconv1.bias"])),
                         state[p + "pwconv2.weight"], state[p + "pwconv2.bias"])  # fmt: skip
            x = x + y.permute(0, 3, 1, 2)
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), state["norm.weight"], state["norm.bias"], 1e-6)
    return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["bare", "official_full_checkpoint"])
def test_official_convnext_state_dict_loads_strictly_and_computes_the_official_forward(tmp_path, layout):
    state = official_convnext_tiny_state()
    stored = state if layout == "bare" else {"model": {f"module.backbone.{k}": v for k, v in state.items()}}
    stored_extra = {"module.projector.0.weight": torch.zeros(4, 768)} if layout != "bare" else {}
    if stored_extra:
        stored["model"].update(stored_extra)
    path = tmp_path / "convnext_tiny.pth"
    torch.save(stored, path)
    model = load_backbone("convnext_tiny", path).eval()
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feature_map, pooled = model(images)
        stages = model.forward_stages(images)
    expected_map = reference_convnext_forward(state, images)
    torch.testing.assert_close(feature_map, expected_map, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, expected_map.mean(dim=(2, 3)), atol=1e-4, rtol=1e-4)
    # forward_stages returns the raw last stage: the final norm of it is forward's feature map.
    normed_last = model.norm(stages[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(normed_last, feature_map)


def test_convnext_defaults_drop_path_0p1_and_no_layer_scale():
    model = build_backbone("convnext_tiny")
    blocks = [block for stage in model.stages for block in stage]
    assert len(blocks) == 18
    assert isinstance(blocks[0].drop_path, torch.nn.Identity)
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert blocks[9].drop_path.drop_prob == pytest.approx(0.1 * 9 / 17)
    assert not [key for key in model.state_dict() if key.endswith("gamma")]


def test_convnext_gamma_keys_must_match_layer_scale(tmp_path):
    with_gamma = tmp_path / "with_gamma.pth"
    torch.save(official_convnext_tiny_state(layer_scale=True), with_gamma)
    with pytest.raises(UserError, match=r"unexpected keys: .*stages\.0\.0\.gamma") as error:
        load_backbone("convnext_tiny", with_gamma)
    assert "layer_scale_init_value" in str(error.value)
    model = load_backbone("convnext_tiny", with_gamma, layer_scale_init_value=1e-6)
    expected_gamma = official_convnext_tiny_state(layer_scale=True)["stages.3.2.gamma"]
    assert torch.equal(model.stages[3][2].gamma, expected_gamma)
    without_gamma = tmp_path / "without_gamma.pth"
    torch.save(official_convnext_tiny_state(), without_gamma)
    with pytest.raises(UserError, match=r"missing keys: .*stages\.0\.0\.gamma"):
        load_backbone("convnext_tiny", without_gamma, layer_scale_init_value=1e-6)


def test_convnext_does_not_drop_fc_keys(tmp_path):
    path = tmp_path / "convnext_with_fc.pth"
    torch.save({**official_convnext_tiny_state(), "fc.weight": torch.zeros(10, 768)}, path)
    with pytest.raises(UserError, match=r"unexpected keys: fc\.weight"):
        load_backbone("convnext_tiny", path)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = build_backbone("resnet18")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-default statistics: buffers round-trip visibly
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
            module.weight.data.normal_()
    return model.state_dict()


def _write(path, name, state):
    """The five accepted file layouts, written as the tools that produce them write them."""
    if name == "backbone_pth":
        save_backbone(path, "resnet18", state)
    elif name == "checkpoint_pth":
        model = {f"backbone.{k}": v for k, v in state.items()}
        model.update({"expander.0.weight": torch.ones(8, 512), "maps_projector.0.weight": torch.ones(8, 512)})
        checkpoint = {"backbone_name": "resnet18", "model": model, "optimizer": {"state": {}}, "epoch": 3}
        torch.save(checkpoint, path)
    elif name == "bare":
        torch.save(state, path)
    elif name == "official_full":
        model = {f"module.backbone.{k}": v for k, v in state.items()}
        model["module.projector.0.weight"] = torch.ones(8, 512)
        torch.save({"model": model, "optimizer": {"state": {}}, "epoch": 100}, path)
    elif name == "torchvision":
        torch.save({**state, "fc.weight": torch.ones(1000, 512), "fc.bias": torch.ones(1000)}, path)


FORMATS = {"backbone_pth": "resnet18", "checkpoint_pth": "resnet18", "bare": None, "official_full": None,
           "torchvision": None}  # fmt: skip


@pytest.mark.parametrize(("layout", "stored_name"), FORMATS.items())
def test_each_accepted_format_round_trips_to_identical_tensors(tmp_path, resnet18_state, layout, stored_name):
    path = tmp_path / f"{layout}.pth"
    _write(path, layout, resnet18_state)
    name, state = read_backbone_state(path)
    assert name == stored_name
    assert list(state) == list(resnet18_state)
    assert all(torch.equal(state[key], resnet18_state[key]) for key in state)
    model = load_backbone(None if stored_name else "resnet18", path)
    assert model.spec.name == "resnet18"
    assert all(torch.equal(value, resnet18_state[key]) for key, value in model.state_dict().items())


def test_a_renamed_key_fails_naming_both_names(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["layer2.0.conv_one.weight"] = state.pop("layer2.0.conv1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as error:
        load_backbone("resnet18", path)
    message = str(error.value)
    assert "missing keys: layer2.0.conv1.weight" in message
    assert "unexpected keys: layer2.0.conv_one.weight" in message


def test_a_mis_shaped_tensor_fails_naming_it(tmp_path, resnet18_state):
    path = tmp_path / "mis_shaped.pth"
    torch.save({**resnet18_state, "layer1.0.bn1.weight": torch.ones(32)}, path)
    with pytest.raises(UserError, match=r"layer1\.0\.bn1\.weight \(32,\) in the file, \(64,\) in resnet18"):
        load_backbone("resnet18", path)


def test_wrong_architecture_lists_at_most_20_keys_and_counts_the_rest(tmp_path, resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(UserError, match=r"missing keys: .*\(and \d+ more\)"):
        load_backbone("resnet50", path)


def test_missing_num_batches_tracked_is_accepted(tmp_path, resnet18_state):
    path = tmp_path / "old_style.pth"
    torch.save({k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}, path)
    model = load_backbone("resnet18", path)
    assert torch.equal(model.layer1[0].bn1.running_mean, resnet18_state["layer1.0.bn1.running_mean"])
    assert model.layer1[0].bn1.num_batches_tracked.item() == 0


def test_name_disagreement_missing_name_and_unknown_name_are_user_errors(tmp_path, resnet18_state):
    path = tmp_path / "backbone.pth"
    save_backbone(path, "resnet18", resnet18_state)
    with pytest.raises(UserError, match="holds a resnet18 backbone, not resnet34"):
        load_backbone("resnet34", path)
    bare = tmp_path / "bare.pth"
    torch.save(resnet18_state, bare)
    with pytest.raises(UserError, match="does not store a backbone name"):
        load_backbone(None, bare)
    with pytest.raises(UserError, match="choose one of: resnet18, resnet34"):
        load_backbone("resnet19", bare)
    with pytest.raises(UserError, match="pass --backbone"):
        load_backbone(None, None)
    with pytest.raises(UserError, match="its options are: zero_init_residual"):
        build_backbone("resnet18", drop_path_rate=0.1)


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_backbone_state(tmp_path / "absent.pth")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        read_backbone_state(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        read_backbone_state(empty)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UserError, match="holds a list"):
        read_backbone_state(listed)
    mixed = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, mixed)
    with pytest.raises(UserError, match="not tensors: epoch"):
        read_backbone_state(mixed)


def test_a_checkpoint_with_numpy_objects_loads_with_a_warning(tmp_path, resnet18_state):
    path = tmp_path / "checkpoint.pth"
    model = {f"backbone.{k}": v for k, v in resnet18_state.items()}
    torch.save({"backbone_name": "resnet18", "model": model, "rng": {"numpy": np.random.get_state()}}, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        name, state = read_backbone_state(path)
    assert name == "resnet18"
    assert all(torch.equal(state[key], resnet18_state[key]) for key in resnet18_state)
    save_backbone(tmp_path / "clean.pth", "resnet18", resnet18_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tensors-only file loads with weights_only=True, no warning
        read_backbone_state(tmp_path / "clean.pth")


def test_save_backbone_writes_the_contract_layout_and_hash(tmp_path, resnet18_state):
    path = tmp_path / "backbone.pth"
    save_backbone(path, "resnet18", resnet18_state)
    stored = torch.load(path, weights_only=True)
    assert set(stored) == {"backbone_name", "state_dict"}
    assert stored["backbone_name"] == "resnet18"
    assert weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(UserError, match="unknown backbone"):
        save_backbone(tmp_path / "x.pth", "resnet_18", resnet18_state)


def test_resnet_overrides_dilation_and_zero_init_residual():
    with torch.device("meta"):
        dilated = build_backbone("resnet50", replace_stride_with_dilation=(False, True, True))
        stages = dilated.forward_stages(torch.zeros(1, 3, 64, 64))
    assert dilated.spec.output_stride == 8
    assert [tuple(stage.shape[-2:]) for stage in stages] == [(16, 16), (8, 8), (8, 8), (8, 8)]
    with pytest.raises(UserError, match="resnet18 has basic blocks"):
        build_backbone("resnet18", replace_stride_with_dilation=(False, False, True))
    model = build_backbone("resnet18")
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0
    plain = build_backbone("resnet18", zero_init_residual=False)
    assert torch.equal(plain.layer1[0].bn2.weight, torch.ones(64))


def test_cli_lists_all_18_backbones():
    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert list(rows) == ALL_NAMES
    assert "23.51 M" in rows["resnet50"] and "2048" in rows["resnet50"]
    assert "49.44 M" in rows["convnext_small"] and "96-192-384-768" in rows["convnext_small"]
    assert "4096" in rows["resnet50x2"] and "512-1024-2048-4096" in rows["resnet50x2"]


def test_small_stem_keeps_full_resolution_and_torchvision_key_names():
    torch.manual_seed(0)
    model = build_backbone("resnet18_small").eval()
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, torch.nn.Identity)
    reference = torchvision.models.resnet18()
    assert list(model.state_dict()) == [key for key in reference.state_dict() if not key.startswith("fc.")]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the same blocks as torchvision's resnet18 after a 3 x 3 stride-1 stem
        reference.conv1 = model.conv1
        reference.load_state_dict({**model.state_dict(), "fc.weight": reference.fc.weight,
                                   "fc.bias": reference.fc.bias})  # fmt: skip
        stem = reference.relu(reference.bn1.eval()(reference.conv1(images)))
        expected = reference.eval().layer4(reference.layer3(reference.layer2(reference.layer1(stem))))
        feature_map, _ = model(images)
    assert feature_map.shape == (2, 512, 8, 8)  # output stride 8: a 64 px image gives an 8 x 8 grid
    torch.testing.assert_close(feature_map, expected)
    assert get_spec("resnet50_small").output_stride == 8
