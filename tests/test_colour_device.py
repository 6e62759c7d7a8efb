"""Colour on the training device: the uint8 crops + colour parameters the workers ship, coloured batched by
colour_device.apply_colours (here on CPU tensors), give the views of the all-CPU path for the same seeds; the
device step draws nothing and reads nothing back; output dtype / layout; the uint8 JPEG decoder gives PIL's
pixels; the colour_on setting."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vicregl_cli.data import photometric
from vicregl_cli.data.colour_device import apply_colours, colour_crops
from vicregl_cli.data.decode import read_rgb_uint8
from vicregl_cli.data.file_list import list_image_folder
from vicregl_cli.data.multicrop import MultiCropConfig, MultiCropTransform, Uint8Views, collate
from vicregl_cli.data.readers import load_rgb
from vicregl_cli.errors import UserError
from vicregl_cli.pretrain.config import load_config
from vicregl_cli.pretrain.plan import to_device, training_dataset
from vicregl_cli.pretrain.sampler import SeededSamples

TOLERANCE = 1e-5  # per pixel of the normalised views (measured: 1.4e-6)
# Every op taken often: blur and solarisation with p 0.5+ on both crop parities.
CONFIGS = {
    "dense blur": MultiCropConfig(
        large_size=64, small_size=32, small_count=10, blur_p=(1.0, 0.5), solarize_p=(0.5, 0.5)
    ),
    "banded blur": MultiCropConfig(large_size=160, large_count=3, blur_p=(1.0, 0.5), solarize_p=(0.5, 0.5)),
}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def seeded_batch(transform: MultiCropTransform, seeds: list[int]):
    """A collated batch, sample k drawn with torch seeded by seeds[k] (as SeededSamples does)."""
    samples = []
    for seed in seeds:
        torch.manual_seed(seed)
        samples.append((transform(random_image(120, 150, seed)), seed % 3))
    return collate(samples)


CPU_PLAN = SimpleNamespace(env=SimpleNamespace(device="cpu"), precision="fp32", num_classes=3)


@pytest.mark.parametrize("name", CONFIGS)
def test_device_colours_give_the_workers_views_for_the_same_seeds(name):
    config = CONFIGS[name]
    seeds = list(range(100, 106))
    on_workers = seeded_batch(MultiCropTransform(config), seeds)
    shipped = seeded_batch(MultiCropTransform(config, colour_on_device=True), seeds)
    assert isinstance(shipped[0], Uint8Views)
    assert all(crop.dtype == torch.uint8 for crop in shipped[0].crops)
    # The parameters exercise every op: each jitter op in each slot, grayscale, blur, solarisation, none.
    params = shipped[0].colour.flatten(0, 1)
    jittered = params[:, photometric.JITTER_ON] == 1
    assert 0 < jittered.sum() < len(params)
    orders = params[jittered][:, photometric.JITTER_ORDER]
    assert all(set(orders[:, slot].tolist()) == {0.0, 1.0, 2.0, 3.0} for slot in range(4))
    for column in (photometric.GRAYSCALE_ON, photometric.BLUR_ON, photometric.SOLARIZE_ON):
        assert set(params[:, column].tolist()) == {0.0, 1.0}
    views, positions, labels = to_device(CPU_PLAN, *shipped)
    expected_views, expected_positions, expected_labels = to_device(CPU_PLAN, *on_workers)
    for got, expected in zip(views, expected_views, strict=True):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert (got - expected).abs().max().item() <= TOLERANCE
    assert all(torch.equal(a, b) for a, b in zip(positions, expected_positions, strict=True))
    assert torch.equal(labels, expected_labels)


def test_the_device_step_draws_nothing_and_repeats_exactly():
    transform = MultiCropTransform(CONFIGS["dense blur"], colour_on_device=True)
    crops, colour = seeded_batch(transform, [1, 2, 3])[0]
    state = torch.get_rng_state()
    first = apply_colours(crops, colour, torch.float32, channels_last=False)
    second = apply_colours(crops, colour, torch.float32, channels_last=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(crop.dtype == torch.uint8 for crop in crops)  # the shipped crops are left as they were


def test_views_come_out_in_the_autocast_dtype_and_channels_last():
    crops, colour = seeded_batch(MultiCropTransform(CONFIGS["dense blur"], colour_on_device=True), [4, 5])[0]
    in_fp32 = apply_colours(crops, colour, torch.float32, channels_last=False)
    in_bf16 = apply_colours(crops, colour, torch.bfloat16, channels_last=True)
    for exact, view in zip(in_fp32, in_bf16, strict=True):
        assert view.dtype == torch.bfloat16 and view.is_contiguous(memory_format=torch.channels_last)
        # bf16 keeps 8 significant bits: |x| < 2.7 rounds by at most 2^-8 · 2.
        assert torch.allclose(view.float(), exact, rtol=0, atol=2.0**-7)


def test_an_uncoloured_crop_is_only_normalised():
    """All flags 0: the view is (x / 255 − mean) / std of the uint8 crop, whatever the factors hold."""
    crops = random_image(48, 48, 0).view(1, 3, 48, 48)
    params = torch.zeros(1, photometric.NUM_PARAMS)
    params[0, photometric.JITTER_FACTORS] = torch.tensor([1.3, 0.7, 1.1, 0.05])
    params[0, photometric.BLUR_SIGMA_COLUMN] = 1.5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (crops.float() / 255 - mean) / std
    assert torch.allclose(colour_crops(crops, params), expected, atol=1e-6)


def test_shipped_pixels_are_a_quarter_of_the_float_views():
    config = CONFIGS["dense blur"]
    on_workers = seeded_batch(MultiCropTransform(config), [7, 8])[0]
    shipped = seeded_batch(MultiCropTransform(config, colour_on_device=True), [7, 8])[0]
    float_bytes = sum(view.nbytes for view in on_workers)
    assert sum(crop.nbytes for crop in shipped.crops) * 4 == float_bytes
    assert shipped.colour.shape == (2, config.num_views, photometric.NUM_PARAMS)


def test_loader_workers_ship_the_batches_the_main_process_makes(tmp_path):
    """Through two worker processes (shared memory, seeding without restoring the worker's RNG) the uint8
    batches equal the ones collated in the main process, whose RNG state is left as it was."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for index in range(3):
            pixels = random_image(60, 80, index + 3 * (label == "b")).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(tmp_path / label / f"{index}.jpg", quality=90)
    dataset = SeededSamples(training_dataset(list_image_folder(tmp_path), CONFIGS["dense blur"], "device"))
    batches = [[(index, 1000 + index) for index in range(first, first + 3)] for first in (0, 3)]
    state = torch.get_rng_state()
    in_process = [collate([dataset[item] for item in batch]) for batch in batches]
    assert torch.equal(torch.get_rng_state(), state)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=2, collate_fn=collate)
    for (views, positions, labels), (expected_views, expected_positions, expected_labels) in zip(
        loader, in_process, strict=True
    ):
        assert all(torch.equal(a, b) for a, b in zip(views.crops, expected_views.crops, strict=True))
        assert torch.equal(views.colour, expected_views.colour)
        assert all(torch.equal(a, b) for a, b in zip(positions, expected_positions, strict=True))
        assert torch.equal(labels, expected_labels)


def jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode, options",
    [
        ("RGB", dict(quality=90)),  # 4:2:0
        ("RGB", dict(quality=95, subsampling=0)),  # 4:4:4
        ("RGB", dict(quality=60, subsampling=1)),  # 4:2:2
        ("RGB", dict(quality=85, progressive=True)),
        ("L", dict(quality=90)),
        ("CMYK", dict(quality=90)),  # through PIL
    ],
)
def test_the_uint8_decoder_gives_pils_pixels(tmp_path, mode, options):
    pixels = random_image(75, 101, 3).permute(1, 2, 0).numpy()
    path = tmp_path / "image.jpg"
    image = Image.fromarray(pixels).convert(mode)
    image.save(path, "JPEG", **options)
    decoded = read_rgb_uint8(path)
    assert decoded.shape == (3, 75, 101) and decoded.dtype == torch.uint8
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), np.asarray(load_rgb(path)))


def test_the_uint8_decoder_reads_other_formats_and_names_a_broken_file(tmp_path):
    pixels = random_image(20, 30, 4).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(tmp_path / "image.png")
    assert np.array_equal(read_rgb_uint8(tmp_path / "image.png").permute(1, 2, 0).numpy(), pixels)
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes(pixels)[:200])
    with pytest.raises(UserError, match="cut.jpg"):
        read_rgb_uint8(tmp_path / "cut.jpg")


def test_colour_on_defaults_to_the_device_and_refuses_other_values():
    assert load_config(None, {}).colour_on == "device"
    assert load_config(None, {"colour_on": "workers"}).colour_on == "workers"
    with pytest.raises(UserError, match="colour_on 'gpu'"):
        load_config(None, {"colour_on": "gpu"})
