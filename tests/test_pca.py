"""vicregl pca: the foreground split and colours on features with known principal directions, the figure's
layout, and the command's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vicregl_cli.backbones import resolve_weights, save_backbone
from vicregl_cli.cli import app
from vicregl_cli.errors import UserError
from vicregl_cli.pca_maps import (
    CELL,
    HEADER,
    dense_features,
    foreground_mask,
    input_batch,
    patch_colours,
    pca_maps,
    read_crop,
)

torch.set_num_threads(1)
BACKBONE = "resnet10_small_w16"  # output stride 8: a 32 px input gives 4 x 4 patches


def known_features(num_foreground: int, num_background: int, offset: float = 10.0) -> tuple[np.ndarray, ...]:
    """Patches in 8 channels: background at 0, foreground at `offset` along channel 0 plus coordinates along
    channels 1..3 that are zero-mean, mutually orthogonal and of variances in the ratio 36 : 9 : 1 (so the
    foreground's principal components are channels 1, 2, 3 and its scores those coordinates exactly).
    Returns (features, foreground truth, the three coordinates)."""
    generator = np.random.default_rng(0)
    raw = generator.normal(size=(num_foreground, 3))
    orthonormal, _ = np.linalg.qr(raw - raw.mean(axis=0))  # centred columns: their span is orthogonal to 1
    coordinates = orthonormal * np.array([6.0, 3.0, 1.0])
    features = np.zeros((num_foreground + num_background, 8))
    order = generator.permutation(len(features))
    foreground = np.zeros(len(features), dtype=bool)
    foreground[order[:num_foreground]] = True
    features[foreground, 0] = offset
    features[foreground, 1:4] = coordinates
    return features, foreground, coordinates


@pytest.mark.parametrize("offset", [10.0, -10.0])
def test_the_first_component_separates_the_two_regions_and_the_smaller_is_foreground(offset):
    features, foreground, _ = known_features(12, 24, offset)
    np.testing.assert_array_equal(foreground_mask(features), foreground)
    # the same regions with the roles swapped in size: the 24 patches at the offset are now the background
    features, smaller, _ = known_features(24, 12, offset)
    np.testing.assert_array_equal(foreground_mask(features), ~smaller)


def test_constant_features_have_no_foreground():
    assert not foreground_mask(np.ones((9, 4))).any()


def test_colours_are_the_foreground_principal_coordinates_min_max_scaled_and_background_black():
    features, foreground, coordinates = known_features(12, 24)
    colours = patch_colours(features)
    assert colours.shape == (36, 3)
    np.testing.assert_array_equal(colours[~foreground], 0.0)
    expected = (coordinates - coordinates.min(axis=0)) / np.ptp(coordinates, axis=0)
    for channel in range(3):  # a principal axis has no sign: the colour runs up or down the coordinate
        found = colours[foreground, channel]
        up, down = expected[:, channel], 1 - expected[:, channel]
        assert min(np.abs(found - up).max(), np.abs(found - down).max()) < 1e-9, channel


def test_fewer_foreground_patches_than_components_leave_the_missing_channels_zero():
    features = np.zeros((10, 5))
    features[:2, 0] = 4.0  # 2 foreground patches, distinct along channel 1
    features[:2, 1] = [1.0, -1.0]
    colours = patch_colours(features)
    np.testing.assert_array_equal(np.sort(colours[:2, 0]), [0.0, 1.0])
    np.testing.assert_array_equal(colours[:2, 1:], 0.0)
    np.testing.assert_array_equal(colours[2:], 0.0)


def test_the_fit_is_joint_over_the_images():
    """Image 0 is all background, image 1 holds the foreground: one fit over both keeps image 0 black."""
    features, foreground, _ = known_features(4, 28)
    ordered = np.concatenate([features[~foreground], features[foreground]])  # the 4 foreground patches last
    maps = pca_maps(torch.from_numpy(ordered).reshape(2, 4, 4, 8))
    assert maps.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(maps[0], 0.0)
    assert (maps[1].reshape(16, 3)[-4:].max(axis=1) > 0).all()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Three 40 x 32 images (a centre crop of 32 px after resizing) with a bright square on a dark ground."""
    root = tmp_path_factory.mktemp("pca")
    paths = []
    for index in range(3):
        pixels = np.full((32, 40, 3), 30, dtype=np.uint8)
        pixels[4 + 2 * index : 16 + 2 * index, 8:22] = (220, 180, 40)
        Image.fromarray(pixels).save(root / f"image{index}.png")
        paths.append(root / f"image{index}.png")
    return paths


def test_the_figure_has_a_row_per_image_and_a_column_per_backbone_and_draws_the_maps(images, tmp_path):
    weights_file = tmp_path / "trained" / "backbone.pth"
    model = resolve_weights("random", BACKBONE, seed=3).build()
    save_backbone(weights_file, BACKBONE, model.state_dict())
    out = tmp_path / "maps.png"
    arguments = ["pca", "--weights", str(weights_file), "--weights", "random", "--backbone", BACKBONE,
                 "--image-size", "32", "--out", str(out), *map(str, images)]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "3 images x 2 backbones" in result.output
    with Image.open(out) as figure:
        drawn = np.asarray(figure.convert("RGB"))
    assert drawn.shape == (HEADER + 3 * CELL, 3 * CELL, 3)
    batch = input_batch([read_crop(path, 32) for path in images])
    features = dense_features(resolve_weights(weights_file), batch, stage=4)
    assert features.shape == (3, 4, 4, 128)
    expected = np.round(pca_maps(features) * 255)
    block = CELL // 4
    centres = drawn[HEADER + block // 2 :: block, CELL + block // 2 : 2 * CELL : block]  # first map column
    np.testing.assert_array_equal(centres.reshape(3, 4, 4, 3), expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out", "maps.jpg"], "PNG"),
        (["--stage", "5"], "--stage must be one of"),
        (["--image-size", "8"], "fewer than 2 x 2 patches"),
        (["--stage", "2", "--image-size", "3"], "stride 2"),
    ],
)
def test_bad_settings_are_refused_before_any_compute(images, tmp_path, options, message):
    arguments = ["pca", "--weights", "random", "--backbone", BACKBONE, "--out", str(tmp_path / "maps.png"),
                 "--image-size", "32", *options, str(images[0])]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, UserError) and message in str(result.exception)
    assert not (tmp_path / "maps.png").exists()


def test_an_unreadable_image_and_a_missing_backbone_name_are_user_errors(images, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("text")
    base = ["pca", "--out", str(tmp_path / "maps.png"), "--image-size", "32"]
    random = ["--weights", "random", "--backbone", BACKBONE]
    result = CliRunner().invoke(app, [*base, *random, str(not_an_image)])
    assert isinstance(result.exception, UserError) and "cannot read image" in str(result.exception)
    result = CliRunner().invoke(app, [*base, "--weights", "random", str(images[0])])
    assert isinstance(result.exception, UserError) and "--backbone" in str(result.exception)


def test_help_lists_the_command_and_its_options():
    listing = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert " pca " in listing.output
    result = CliRunner().invoke(app, ["pca", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--weights", "--out", "--backbone", "--stage", "--image-size"):
        assert option in result.output
