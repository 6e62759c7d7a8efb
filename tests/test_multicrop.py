"""Multi-crop views with positions: hand-computed grids, flips, crop geometry on a gradient image, colour ops
against torchvision's / straightforward references, shapes, determinism, collate, the ImageFolder path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader

from vicregl_cli.data import photometric
from vicregl_cli.data.multicrop import (
    MULTICROP_PRESETS,
    MultiCropConfig,
    MultiCropTransform,
    collate,
    grid_positions,
)
from vicregl_cli.data.readers import image_folder
from vicregl_cli.errors import UserError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def hand_grid(
    top: float, left: float, height: float, width: float, cells: int, flipped: bool
) -> torch.Tensor:
    rows = []
    for row in range(cells):
        for column in range(cells):
            source_column = cells - 1 - column if flipped else column
            rows.append([top + (row + 0.5) * height / cells, left + (source_column + 0.5) * width / cells])
    return torch.tensor(rows)


def random_image(height: int = 375, width: int = 500, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


# --- positions ------------------------------------------------------------------------------------


def test_positions_of_a_known_box_are_the_cell_centres():
    box = torch.tensor([[20, 10, 140, 70]])  # top, left, height, width
    positions = grid_positions(box, 7, torch.tensor([False]))[0]
    expected = torch.tensor(
        [[20 + 10 + 20 * k, 10 + 5 + 10 * m] for k in range(7) for m in range(7)], dtype=torch.float32
    )
    assert positions.shape == (49, 2) and positions.dtype == torch.float32
    assert torch.allclose(positions, expected, atol=1e-4)


def test_a_flipped_box_lists_its_columns_reversed():
    box = torch.tensor([[20, 10, 140, 70]])
    flipped = grid_positions(box, 7, torch.tensor([True]))[0].view(7, 7, 2)
    unflipped = grid_positions(box, 7, torch.tensor([False]))[0].view(7, 7, 2)
    assert torch.equal(flipped, unflipped.flip(1))
    assert flipped[0, 0].tolist() == pytest.approx(
        [30.0, 10 + 5 + 60.0]
    )  # column 0 holds the right-most cell


def test_positions_of_several_boxes_match_a_loop():
    boxes = torch.tensor([[0, 0, 375, 500], [3, 7, 33, 65], [100, 50, 17, 250]])
    flips = torch.tensor([False, True, True])
    positions = grid_positions(boxes, 3, flips)
    for box, flip, got in zip(boxes.tolist(), flips.tolist(), positions, strict=True):
        assert torch.allclose(got, hand_grid(*box, 3, flip), atol=1e-4)


@pytest.mark.parametrize("ignore_flip", [False, True])
def test_transform_positions_follow_the_flip_setting(ignore_flip):
    config = MultiCropConfig(large_count=4, small_size=96, small_count=4, ignore_flip=ignore_flip)
    transform = MultiCropTransform(config)
    torch.manual_seed(3)
    seen_flips = set()
    for group, size in zip(transform.crop_groups(random_image()), (224, 96), strict=True):
        for box, flip, positions in zip(group.boxes, group.flipped, group.positions, strict=True):
            seen_flips.add(flip)
            expected = hand_grid(*box, size // 32, flipped=flip and not ignore_flip)
            assert torch.allclose(positions, expected, atol=1e-4)
    assert seen_flips == {False, True}


# --- configuration --------------------------------------------------------------------------------


def test_grid_size_follows_crop_size_and_stride():
    config = MULTICROP_PRESETS["convnext"]
    assert (config.grid(224), config.grid(96)) == (7, 3)
    assert MultiCropConfig(stride=16).grid(224) == 14
    sample = MultiCropTransform(MultiCropConfig(large_size=64, small_size=32, small_count=1)).__call__(
        random_image()
    )
    assert [p.shape for p in sample.positions] == [(4, 2), (4, 2), (1, 2)]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(large_size=16),
        dict(small_size=16, small_count=2),
        dict(large_size=100),  # 100 // 32 = 3, but a ResNet's feature map is 4 × 4
        dict(large_count=1),
        dict(small_scale=(0.5, 0.2), small_count=2),
        dict(large_scale=(0.0, 1.0)),
        dict(stride=0),
    ],
)
def test_bad_configurations_are_user_errors(overrides):
    with pytest.raises(UserError):
        MultiCropConfig(**overrides)


def test_a_small_size_is_not_checked_without_small_crops():
    assert MultiCropConfig(small_size=16, small_count=0).num_views == 2


def test_presets_are_the_papers_recipes():
    resnet, convnext = MULTICROP_PRESETS["resnet"], MULTICROP_PRESETS["convnext"]
    assert (resnet.large_size, resnet.large_count, resnet.large_scale, resnet.small_count) == (
        224,
        2,
        (0.08, 1.0),
        0,
    )
    assert (convnext.large_size, convnext.large_count, convnext.large_scale) == (224, 2, (0.4, 1.0))
    assert (convnext.small_size, convnext.small_count, convnext.small_scale) == (96, 6, (0.08, 0.4))


# --- crop geometry --------------------------------------------------------------------------------


def sample_at(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear value of a (C, H, W) image at continuous (y, x), pixel k covering [k, k + 1)."""
    fy, fx = y - 0.5, x - 0.5
    y0, x0 = math.floor(fy), math.floor(fx)
    wy, wx = fy - y0, fx - x0
    patch = image[:, y0 : y0 + 2, x0 : x0 + 2].double()
    return (
        patch[:, 0, 0] * (1 - wy) * (1 - wx)
        + patch[:, 0, 1] * (1 - wy) * wx
        + patch[:, 1, 0] * wy * (1 - wx)
        + patch[:, 1, 1] * wy * wx
    )


def test_resized_crops_show_the_source_at_their_positions():
    """Red encodes x and green y: at each cell centre of a crop, the colour names the position it claims."""
    height, width = 300, 400
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    red, green = xs * 255 / width, ys * 255 / height
    image = torch.stack([red, green, torch.full_like(red, 128)]).round().to(torch.uint8)
    transform = MultiCropTransform(MultiCropConfig(large_count=4, small_count=4, small_scale=(0.05, 0.4)))
    torch.manual_seed(0)
    flips = set()
    for group in transform.crop_groups(image):
        size = group.pixels.shape[-1]
        cells = size // 32
        for crop, positions, flip in zip(group.pixels, group.positions, group.flipped, strict=True):
            flips.add(flip)
            for index, (y, x) in enumerate(positions.tolist()):
                row, column = divmod(index, cells)
                value = sample_at(crop, (row + 0.5) * size / cells, (column + 0.5) * size / cells)
                assert value[0].item() == pytest.approx(x * 255 / width, abs=1.5)
                assert value[1].item() == pytest.approx(y * 255 / height, abs=1.5)
    assert flips == {False, True}


def test_pil_and_tensor_inputs_give_the_same_crops():
    image = random_image(120, 160)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    transform = MultiCropTransform(MultiCropConfig(large_size=64, small_size=32, small_count=2))
    torch.manual_seed(5)
    from_tensor = transform(image)
    torch.manual_seed(5)
    from_pil = transform(pil)
    for a, b in zip(
        from_tensor.views + from_tensor.positions, from_pil.views + from_pil.positions, strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5)


# --- colour operations ----------------------------------------------------------------------------


def float_images(count: int = 4, size: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), generator=generator).float()
    images[:, :, :4, :4] = 90.0  # gray pixels: hue undefined
    images[:, 0, 4:8] = images[:, 1, 4:8]  # red = green ties
    images[:, 2, 8:12] = images[:, 1, 8:12]  # green = blue ties
    return images


def test_colour_ops_match_torchvision():
    images = float_images()
    factors = torch.tensor([0.6, 0.93, 1.17, 1.4])
    shifts = torch.tensor([-0.1, -0.02, 0.05, 0.1])
    view = factors.view(4, 1, 1, 1)

    def torchvision_each(op, values):
        return torch.stack(
            [op(image / 255, float(value)) * 255 for image, value in zip(images, values, strict=True)]
        )

    got = photometric.blend_(images.clone(), view, None, None)
    assert torch.allclose(got, torchvision_each(TF.adjust_brightness, factors), atol=1e-3)
    got = photometric.blend_(images.clone(), view, None, 1 - view)
    assert torch.allclose(
        got, torchvision_each(TF.adjust_contrast, factors), atol=0.05
    )  # luma 0.299 vs 0.2989
    got = photometric.blend_(images.clone(), view, 1 - view, None)
    assert torch.allclose(got, torchvision_each(TF.adjust_saturation, factors), atol=0.05)
    got = photometric.adjust_hue_(images.clone(), shifts.view(4, 1, 1, 1))
    assert torch.allclose(got, torchvision_each(TF.adjust_hue, shifts), atol=1e-2)
    gray = TF.rgb_to_grayscale(images / 255, num_output_channels=3) * 255
    zeros, ones = torch.zeros(4, 1, 1, 1), torch.ones(4, 1, 1, 1)  # the recipe's grayscale blend (0, 1, 0)
    assert torch.allclose(photometric.blend_(images.clone(), zeros, ones, None), gray, atol=0.05)
    assert torch.equal(
        photometric.solarize_(images.clone()), torch.where(images >= 128, 255 - images, images)
    )
    normalised = photometric.normalize_(images.clone())
    assert torch.allclose(normalised, (images / 255 - MEAN) / STD, atol=1e-5)


def test_hue_shifts_beyond_the_unwrapped_range_are_refused():
    with pytest.raises(ValueError, match="hue shifts"):
        photometric.adjust_hue_(float_images(2), torch.tensor([0.1, -0.2]).view(2, 1, 1, 1))


def reference_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian truncated at radius 8, normalised, edges repeated: a plain 2-D convolution."""
    offsets = torch.arange(-8, 9, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel2d = torch.outer(kernel, kernel) / kernel.sum() ** 2
    padded = F.pad(image.double().unsqueeze(1), (8, 8, 8, 8), mode="replicate")
    return F.conv2d(padded, kernel2d.view(1, 1, 17, 17)).squeeze(1).float()


@pytest.mark.parametrize("size", [24, 96, 160])
def test_gaussian_blur_matches_a_plain_convolution(size):
    images = float_images(3, size)
    sigmas = [0.1, 0.9, 2.0]
    got = photometric.gaussian_blur_(images.clone(), sigmas)
    for image, sigma, blurred in zip(images, sigmas, got, strict=True):
        assert torch.allclose(blurred, reference_blur(image, sigma), atol=1e-3)


def augment_one_by_one(images: torch.Tensor, draws: torch.Tensor, blur_p, solarize_p) -> torch.Tensor:
    """The recipe image by image with torchvision's ops, reading the documented layout of the draws."""
    results = []
    for image, u, p_blur, p_solarize in zip(images / 255, draws.tolist(), blur_p, solarize_p, strict=True):
        if u[0] < 0.8:
            steps = [
                (TF.adjust_brightness, 0.6 + 0.8 * u[1]),
                (TF.adjust_contrast, 0.6 + 0.8 * u[2]),
                (TF.adjust_saturation, 0.8 + 0.4 * u[3]),
                (TF.adjust_hue, -0.1 + 0.2 * u[4]),
            ]
            for step in np.argsort(u[5:9], kind="stable"):
                op, factor = steps[step]
                image = op(image, factor)
        if u[9] < 0.2:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if u[10] < p_blur:
            image = reference_blur(image, 0.1 + 1.9 * u[11])
        if u[12] < p_solarize:
            image = torch.where(image >= 127.5 / 255, 1 - image, image)
        results.append((image - MEAN) / STD)
    return torch.stack(results)


@pytest.mark.parametrize("seed", range(6))
def test_batched_colour_augmentation_equals_one_image_at_a_time(seed):
    images = float_images(6, 20, seed)
    blur_p, solarize_p = [1.0, 0.5, 0.0, 1.0, 0.5, 0.1], [0.0, 0.5, 1.0, 0.5, 0.2, 1.0]
    torch.manual_seed(seed)
    got = photometric.augment_colours_(images.clone(), photometric.draw_colour_params(blur_p, solarize_p))
    torch.manual_seed(seed)
    expected = augment_one_by_one(images, torch.rand(6, 13), blur_p, solarize_p)
    assert torch.allclose(got, expected, atol=0.02)


# --- full samples ---------------------------------------------------------------------------------


def test_a_full_sample_has_the_recipe_shapes_and_dtypes():
    sample = MultiCropTransform(MULTICROP_PRESETS["convnext"])(random_image())
    assert [tuple(v.shape) for v in sample.views] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 6
    assert [tuple(p.shape) for p in sample.positions] == [(49, 2)] * 2 + [(9, 2)] * 6
    assert sample.colour is None
    pairs = zip(sample.views, sample.positions, strict=True)
    assert all(v.dtype == torch.float32 and p.dtype == torch.float32 for v, p in pairs)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    for view in sample.views:
        assert torch.all(view >= low - 1e-4) and torch.all(view <= high + 1e-4)
    for position in sample.positions:
        assert torch.all(position[:, 0] > 0) and torch.all(position[:, 0] < 375)
        assert torch.all(position[:, 1] > 0) and torch.all(position[:, 1] < 500)


def test_samples_are_deterministic_under_manual_seed():
    transform = MultiCropTransform(MULTICROP_PRESETS["convnext"])
    image = random_image()
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    second = transform(image)
    torch.manual_seed(8)
    third = transform(image)
    pairs = zip(first.views + first.positions, second.views + second.positions, strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(first.positions[0], third.positions[0])


def test_collate_batches_views_positions_and_labels():
    transform = MultiCropTransform(MultiCropConfig(large_size=64, small_size=32, small_count=3))
    batch = [(transform(random_image(80, 100, seed)), label) for seed, label in enumerate([2, 0, 1])]
    views, positions, labels = collate(batch)
    assert [tuple(v.shape) for v in views] == [(3, 3, 64, 64)] * 2 + [(3, 3, 32, 32)] * 3
    assert [tuple(p.shape) for p in positions] == [(3, 4, 2)] * 2 + [(3, 1, 2)] * 3
    assert labels.tolist() == [2, 0, 1] and labels.dtype == torch.long
    assert torch.equal(views[3][1], batch[1][0].views[3])
    assert torch.equal(positions[0][2], batch[2][0].positions[0])


def test_plugs_into_image_folder_and_a_data_loader(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for index in range(2):
            pixels = random_image(48 + 8 * index, 72, seed=index).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(tmp_path / name / f"{index}.png")
    config = MultiCropConfig(large_size=32, small_size=32, small_count=1, small_scale=(0.1, 0.3))
    dataset = image_folder(tmp_path, transform=MultiCropTransform(config))
    views, positions, labels = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate)))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 3
    assert [tuple(p.shape) for p in positions] == [(4, 1, 2)] * 3
    assert labels.tolist() == [0, 0, 1, 1]
