"""Pretraining learns: after 64 steps on a tiny synthetic set, held-out augmented views of one image are
closer (pooled representations), and locations that match in image position are closer (local embeddings),
than before training, by margins; each deliberate break of the loop makes the check fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vicregl_cli.data import multicrop
from vicregl_cli.data.multicrop import MultiCropConfig, MultiCropTransform
from vicregl_cli.data.readers import image_folder
from vicregl_cli.pretrain import plan as plan_module
from vicregl_cli.pretrain.config import PretrainConfig, load_config
from vicregl_cli.pretrain.loop import train

STEPS = 64  # 16 epochs of 64 images at batch 16
ALPHA = 0.25  # mostly the local criterion, so that scrambled positions show
PAIRS = 48  # held-out images, two views each
# Gains of `alignment` that training must reach. Measured (seeds 0 / 1): views +0.050 / +0.058, locations
# +0.032 / +0.033; breaks: no backbone gradient views -0.023, identical views 0.000 / 0.000, scrambled
# positions locations +0.001.
VIEW_GAIN = 0.025
LOCATION_GAIN = 0.015


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from vicregl_cli.data.synthetic import generate

    root = tmp_path_factory.mktemp("learning")
    generate(root, num_train=64, num_val=PAIRS, image_size=32, seed=0, workers=1)
    return root / "classification"


def pretrain(data: Path, out: Path, seed: int) -> tuple[PretrainConfig, Path]:
    """The loop under test, tiny: resnet10_small_w16 on 2 views of 32 px (4 x 4 grids)."""
    config = load_config(None, dict(
        data=str(data / "train"), out=str(out), backbone="resnet10_small_w16", mlp="256-256",
        maps_mlp="64-64", alpha=ALPHA, num_matches=[4, 4], crop_sizes=[32], crop_counts=[2],
        crop_min_scales=[0.3], crop_max_scales=[1.0], blur_probs=[0.0, 0.0], solarize_probs=[0.0, 0.0],
        optimizer="adamw", base_lr=0.06, weight_decay=0.05, epochs=STEPS // 4, warmup_epochs=1,
        batch_size=16, precision="fp32", num_workers=0, seed=seed, checkpoint_every=100, log_every=100,
        probe=False,
    ))  # fmt: skip
    train(config, device="cpu", command_line=["test"])
    return config, out / "checkpoint.pth"


def held_out_pairs(data: Path) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Two augmented 32 px views of every val image, drawn with a fixed seed (the same for every model)."""
    transform = MultiCropTransform(MultiCropConfig(large_size=32, large_count=2, large_scale=(0.3, 1.0),
                                                   stride=8, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0)))
    images = image_folder(data / "val")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        samples = [transform(images.loader(path)) for path, _ in images.samples]
    first, second = (torch.stack([sample.views[index] for sample in samples]) for index in (0, 1))
    positions = [torch.stack([sample.positions[index] for sample in samples]) for index in (0, 1)]
    return first, second, positions[0], positions[1]


def alignment(model: torch.nn.Module, pairs) -> tuple[float, float]:
    """How much closer paired views are than unpaired ones, as 1 - (paired distance / unpaired distance) on
    centred, L2-normalised vectors: for pooled representations (views of one image vs of two images) and for
    local embeddings (locations nearest in image position vs any two locations of the view pair). 0: no
    better than chance; 1: paired vectors identical."""
    first, second, first_positions, second_positions = pairs
    model.eval()
    with torch.no_grad():
        first_maps, first_pooled = model.backbone(first)
        second_maps, second_pooled = model.backbone(second)

        def unit(vectors: torch.Tensor) -> torch.Tensor:
            return F.normalize(vectors - vectors.flatten(0, -2).mean(dim=0), dim=-1)

        a, b = unit(first_pooled), unit(second_pooled)
        distances = torch.cdist(a, b)
        views = 1.0 - distances.diagonal().mean() / distances.mean()

        def local(maps: torch.Tensor) -> torch.Tensor:
            locations = maps.flatten(2).transpose(1, 2)
            batch, count, channels = locations.shape
            return model.maps_projector(locations.reshape(-1, channels)).view(batch, count, -1)

        first_local, second_local = unit(local(first_maps)), unit(local(second_maps))
        local_distances = torch.cdist(first_local, second_local)  # (B, L, L) within each image pair
        nearest = torch.cdist(first_positions, second_positions).argmin(dim=2, keepdim=True)
        matched = local_distances.gather(2, nearest).mean()
        locations = 1.0 - matched / local_distances.mean()
    return float(views), float(locations)


def gains(data: Path, out: Path, seed: int = 0) -> tuple[float, float]:
    """Alignment after training minus that of the same run's initial weights: (views, locations)."""
    config, checkpoint = pretrain(data, out, seed)
    initial = plan_module.build_model(plan_module.plan_run(config, "cpu"))
    trained = plan_module.build_model(plan_module.plan_run(config, "cpu"))
    trained.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    pairs = held_out_pairs(data)
    before, after = alignment(initial, pairs), alignment(trained, pairs)
    return after[0] - before[0], after[1] - before[1]


def learns(data: Path, out: Path, seed: int = 0) -> bool:
    """Both alignments gained more than their margins (printed, so a failure shows the figures)."""
    view_gain, location_gain = gains(data, out, seed)
    print(f"seed {seed}: view alignment {view_gain:+.3f}, location alignment {location_gain:+.3f}")
    return view_gain > VIEW_GAIN and location_gain > LOCATION_GAIN


@pytest.mark.parametrize("seed", [0, 1])
def test_pretraining_learns(data, tmp_path, seed):
    assert learns(data, tmp_path / "run", seed)


def _no_gradient_to_the_backbone(monkeypatch):
    original = plan_module.build_model

    def build(plan):
        model = original(plan)
        forward = model.backbone.forward
        model.backbone.forward = lambda x: tuple(output.detach() for output in forward(x))
        return model

    monkeypatch.setattr(plan_module, "build_model", build)
    monkeypatch.setattr("vicregl_cli.pretrain.loop.build_model", build)


def _identical_views(monkeypatch):
    original = MultiCropTransform.__call__

    def call(self, image):
        sample = original(self, image)
        colour = None if sample.colour is None else sample.colour[[0, 0]]  # colour_on: device
        return multicrop.MultiCropSample([sample.views[0]] * 2, [sample.positions[0]] * 2, colour)

    monkeypatch.setattr(MultiCropTransform, "__call__", call)


def _scrambled_positions(monkeypatch):
    original = multicrop.grid_positions
    generator = np.random.default_rng(0)

    def scrambled(boxes, grid, mirrored):
        positions = np.asarray(original(boxes, grid, mirrored))
        return torch.as_tensor(positions[:, generator.permutation(positions.shape[1])])

    monkeypatch.setattr(multicrop, "grid_positions", scrambled)


@pytest.mark.parametrize("break_loop", [_no_gradient_to_the_backbone, _identical_views, _scrambled_positions])
def test_each_break_of_the_loop_fails_the_check(data, tmp_path, monkeypatch, break_loop):
    """No gradient reaching the backbone, the two views identical, positions scrambled: no learning."""
    break_loop(monkeypatch)
    assert not learns(data, tmp_path / "run")
