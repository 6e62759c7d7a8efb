"""`vicregl matches`: the matches of the VICRegL local criterion on one image, as the papers' Figures 4–5
show them. A pretraining checkpoint's own model, multi-crop and matching code (`pretrain.matching.match_all`,
the function `local_loss` calls) give the crops of a seed and the locations the loss keeps for a pair of
views; matches_figure.py draws them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from vicregl_cli.backbones.registry import build_backbone, get_spec
from vicregl_cli.backbones.weights import read_weights_file
from vicregl_cli.data.multicrop import CropBox, CropGroup, MultiCropSample, MultiCropTransform, to_uint8_image
from vicregl_cli.errors import UserError, key_list
from vicregl_cli.pretrain.config import PretrainConfig, load_config
from vicregl_cli.pretrain.matching import match_all
from vicregl_cli.pretrain.model import LossWeights, VICRegL
from vicregl_cli.pretrain.plan import multicrop_config
from vicregl_cli.seeding import seeded


@dataclass(frozen=True)
class DirectedMatches:
    """One direction of one matching: the `source` view's kept locations and their matches in `target`,
    row-major cell indices of each view's grid, in the loss's order."""

    source: int
    target: int
    kept: list[int]
    matched: list[int]


@dataclass(frozen=True)
class PairMatches:
    """What the figure shows: the seed image, the two views' boxes, flips, displayed crops (as the network
    sees them: resized, flipped) and grids, and per matching ('feature', 'location') both directions."""

    image: Tensor  # (3, H, W) uint8
    pair: tuple[int, int]
    boxes: tuple[CropBox, CropBox]
    flipped: tuple[bool, bool]
    crops: tuple[Tensor, Tensor]  # (3, S, S) uint8
    grids: tuple[int, int]
    num_matches: tuple[int, int]
    matches: dict[str, list[DirectedMatches]]


def load_pretraining_model(path: str | Path) -> tuple[VICRegL, PretrainConfig]:
    """The model of a pretraining RUN/checkpoint.pth (backbone and heads, loaded strictly, eval mode) and its
    configuration. A backbone-only file has no maps projector: a UserError says which file is needed."""
    content = read_weights_file(path).content
    if not isinstance(content, Mapping) or not {"model", "config"} <= set(content):
        raise UserError(
            f"{path} is not a pretraining checkpoint (no 'model' and 'config'): `vicregl matches` needs the "
            "maps projector, which only RUN/checkpoint.pth holds (backbone.pth and release files do not)"
        )
    state: dict[str, Tensor] = dict(content["model"])
    config = load_config(None, dict(content["config"]))
    if config.alpha >= 1.0:
        raise UserError(f"{path} is a VICReg run (alpha 1): it has no maps projector and no local matches")
    weights = LossWeights(
        alpha=config.alpha, num_matches=tuple(config.num_matches), l2_all_matches=config.l2_all_matches
    )
    overrides = (
        {"drop_path_rate": config.drop_path_rate} if get_spec(config.backbone).family == "convnext" else {}
    )
    probe = state.get("probe.weight")
    with torch.device("meta"):
        model = VICRegL(
            build_backbone(config.backbone, **overrides),
            config.mlp_widths(),
            config.maps_mlp_widths(),
            weights,
            num_classes=0 if probe is None else probe.shape[0],
        )
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit its own configuration ({config.backbone}): missing {key_list(missing)};"
            f" unexpected {key_list(unexpected)}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), config


def read_image(path: str | Path) -> Tensor:
    """The image as a (3, H, W) uint8 tensor; a missing or unreadable file is a UserError."""
    try:
        with Image.open(path) as image:
            return to_uint8_image(image.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {path}: {error}") from error


def draw_views(image: Tensor, config: PretrainConfig, seed: int) -> tuple[MultiCropSample, list[CropGroup]]:
    """The training multi-crop of `image` at `seed`: its sample (normalised views, positions) and the crop
    groups (boxes, flips, uint8 crops) of the same draw (the transform draws its boxes first)."""
    transform = MultiCropTransform(multicrop_config(config, get_spec(config.backbone).output_stride))
    with seeded(seed):
        groups = transform.crop_groups(image)
    with seeded(seed):
        sample = transform(image)
    return sample, groups


@torch.no_grad()
def projected_maps(model: VICRegL, views: list[Tensor]) -> list[Tensor]:
    """Each view's backbone map through the maps projector, (1, H·W, C) row-major, as the model's forward."""
    maps = []
    for view in views:
        feature_map, _ = model.backbone(view[None])
        locations = feature_map.flatten(2).transpose(1, 2)
        projected = model.maps_projector(locations.reshape(-1, locations.shape[-1]))
        maps.append(projected.view(1, locations.shape[1], -1))
    return maps


def kept_matches(
    maps: list[Tensor], positions: list[Tensor], weights: LossWeights, pair: tuple[int, int]
) -> dict[str, list[DirectedMatches]]:
    """For pair (i, j): per matching, both directions' kept locations and matches, exactly as `local_loss`
    keeps them (the same call of match_all on every view, the pair's calls picked out)."""
    sizes = [m.shape[1] for m in maps]
    offsets = [sum(sizes[:view]) for view in range(len(sizes))]
    result = match_all(
        torch.cat(maps, dim=1).float(),
        torch.cat(positions, dim=1).float(),
        sizes,
        tuple(weights.num_matches),
        weights.l2_all_matches,
    )
    found: dict[str, list[DirectedMatches]] = {"feature": [], "location": []}
    for call in result.calls:
        if call.pair == pair:
            kept = (result.kept[0, call.columns] - offsets[call.source]).tolist()
            matched = (result.matched[0, call.columns] - offsets[call.target]).tolist()
            kind = "feature" if call.feature_based else "location"
            found[kind].append(DirectedMatches(call.source, call.target, kept, matched))
    return found


def check_pair(pair: tuple[int, int], num_views: int) -> tuple[int, int]:
    """A pair the loss compares: i in {0, 1} (a large view), j another view."""
    first, second = pair
    if first not in (0, 1) or not 0 <= second < num_views or second == first:
        raise UserError(
            f"--pair {first},{second}: the loss pairs view 0 or 1 (the large views) with another of the "
            f"{num_views} views (0..{num_views - 1})"
        )
    return first, second


def compute_matches(
    checkpoint: str | Path, image_path: str | Path, seed: int, pair: tuple[int, int]
) -> PairMatches:
    """Everything the figure draws, from the checkpoint's model and the image's multi-crop at `seed`."""
    model, config = load_pretraining_model(checkpoint)
    image = read_image(image_path)
    sample, groups = draw_views(image, config, seed)
    first, second = check_pair(pair, len(sample.views))
    maps = projected_maps(model, sample.views)
    positions = [p[None] for p in sample.positions]
    matches = kept_matches(maps, positions, model.weights, (first, second))
    located = [(group, index) for group in groups for index in range(group.pixels.shape[0])]
    (group_i, index_i), (group_j, index_j) = located[first], located[second]
    return PairMatches(
        image=image,
        pair=(first, second),
        boxes=(group_i.boxes[index_i], group_j.boxes[index_j]),
        flipped=(group_i.flipped[index_i], group_j.flipped[index_j]),
        crops=(group_i.pixels[index_i], group_j.pixels[index_j]),
        grids=(round(maps[first].shape[1] ** 0.5), round(maps[second].shape[1] ** 0.5)),
        num_matches=tuple(model.weights.num_matches),
        matches=matches,
    )
