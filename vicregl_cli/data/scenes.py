"""Synthetic scenes with exact labels: drawing only (vicregl_cli.data.synthetic writes them to disk).

Each scene holds 2 to 5 textured shapes on a textured background; a class is a (shape, texture) pair, so
neither the outline nor the texture alone names it. Objects occlude each other; masks and boxes come from the
drawn pixels, so they are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "cross_solid", "cross_stripes", "disc_dots", "disc_stripes", "ring_dots", "ring_solid",
    "square_checks", "square_solid", "star_checks", "star_dots", "triangle_checks", "triangle_stripes",
)  # fmt: skip
LARGEST_MARGIN = 1.25  # the labelled object shows at least this many times the pixels of any other object
MIN_VISIBLE_FRACTION = 0.25  # a placement hiding more than 75 % of an object is redrawn
PLACEMENT_TRIES = 8


@dataclass(frozen=True)
class Composition:
    """How a scene is composed: sizes are sqrt(area) as a fraction of the image side."""

    main_size: tuple[float, float]  # the labelled object
    main_centre: tuple[float, float]  # its centre, as a fraction of the side (both axes)
    other_size: tuple[float, float]  # every other object
    others: tuple[int, int]  # how many others: low inclusive, high exclusive


# The multi-object scenes of the VOC layout (segmentation, detection): several objects, the labelled one
# merely the largest.
SCENE = Composition(main_size=(0.34, 0.46), main_centre=(0.3, 0.7), other_size=(0.16, 0.30), others=(1, 5))
# The classification layout, object-centric as ImageNet is: one dominant object whose texture is visible at
# the image size, at most two small distractors (docs/miniature.md: the multi-object scenes were not learnable
# at demo scale, even supervised).
OBJECT_CENTRIC = Composition(
    main_size=(0.5, 0.65), main_centre=(0.4, 0.6), other_size=(0.12, 0.2), others=(0, 3)
)


@dataclass(frozen=True)
class _Placement:
    class_index: int
    centre_x: float
    centre_y: float
    radius: float
    angle: float


@dataclass(frozen=True)
class SceneObject:
    """One visible object: its class (0-based, into CLASS_NAMES) and the tight box of its visible pixels."""

    class_index: int
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: 0-based, inclusive
    truncated: bool  # the shape extends past the image frame


@dataclass
class Scene:
    """A drawn scene: RGB image, instance map (0 background, k = objects[k - 1]), largest object's class."""

    image: np.ndarray
    instances: np.ndarray
    objects: list[SceneObject]
    label: int


def shape_and_texture(class_index: int) -> tuple[str, str]:
    """Split a class name such as `disc_stripes` into its shape and texture."""
    shape, texture = CLASS_NAMES[class_index].split("_")
    return shape, texture


def _inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership in the unit-radius shape, in object coordinates (every shape fits in the unit disc)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        radius2 = u * u + v * v
        return (radius2 <= 1.0) & (radius2 >= 0.25)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "triangle":
        inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for k in range(3):
            normal = np.deg2rad(-90.0 + 120.0 * k)
            inside &= u * np.cos(normal) + v * np.sin(normal) <= 0.5
        return inside
    if shape == "star":  # pentagram: inside at least 4 of the 5 lines through pairs of tips
        sides = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.int8)
        for k in range(5):
            normal = np.deg2rad(90.0 + 72.0 * k)
            sides += u * np.cos(normal) + v * np.sin(normal) <= np.cos(np.deg2rad(72.0))
        return sides >= 4
    raise ValueError(f"unknown shape {shape!r}")


@cache
def _unit_area(shape: str) -> float:
    """Area of the unit-radius shape, measured on a fine grid, so that object sizes mean comparable areas."""
    steps = 401
    axis = np.linspace(-1.05, 1.05, steps)
    inside = _inside_shape(shape, axis[None, :], axis[:, None])
    return float(inside.mean() * (2.1**2))


def _object_mask(placement: _Placement, size: int) -> tuple[np.ndarray, int, bool]:
    """The object's in-image pixels (size x size bool), its whole area, and whether the frame cuts it."""
    shape, _ = shape_and_texture(placement.class_index)
    x0 = int(np.floor(placement.centre_x - placement.radius)) - 1
    y0 = int(np.floor(placement.centre_y - placement.radius)) - 1
    extent = int(np.ceil(2 * placement.radius)) + 3
    xs = (np.arange(x0, x0 + extent) + 0.5 - placement.centre_x) / placement.radius
    ys = (np.arange(y0, y0 + extent) + 0.5 - placement.centre_y) / placement.radius
    cos, sin = np.cos(placement.angle), np.sin(placement.angle)
    u = xs[None, :] * cos + ys[:, None] * sin
    v = ys[:, None] * cos - xs[None, :] * sin
    window = _inside_shape(shape, u, v)
    area = int(window.sum())
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + extent, size), min(x0 + extent, size)
    mask = np.zeros((size, size), dtype=bool)
    if bottom > top and right > left:
        mask[top:bottom, left:right] = window[top - y0 : bottom - y0, left - x0 : right - x0]
    return mask, area, int(mask.sum()) < area


def border_width(size: int) -> int:
    """Half-width of the 255 band along object contours: 1 pixel at 96, growing with the image like VOC's."""
    return max(1, round(size / 160))


def _sliding_extreme(values: np.ndarray, width: int, reduce: np.ufunc) -> np.ndarray:
    """Max (or min) over the (2 width + 1)^2 window around each pixel; the window is cut at the image edge."""
    result = values
    for axis in (0, 1):
        source = result
        result = source.copy()
        for shift in range(1, width + 1):
            ahead, behind = [slice(None), slice(None)], [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            reduce(result[tuple(ahead)], source[tuple(behind)], out=result[tuple(ahead)])
            reduce(result[tuple(behind)], source[tuple(ahead)], out=result[tuple(behind)])
    return result


def boundary_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` (Chebyshev) of a different instance id: a band on both sides of each contour."""
    return _sliding_extreme(instances, width, np.maximum) != _sliding_extreme(instances, width, np.minimum)


def _sample_placement(
    rng: np.random.Generator, size: int, class_index: int, composition: Composition, main: bool
) -> _Placement:
    shape, _ = shape_and_texture(class_index)
    low, high = composition.main_size if main else composition.other_size
    side = rng.uniform(low, high) * size
    centre_low, centre_high = composition.main_centre if main else (0.05, 0.95)
    centre_x, centre_y = rng.uniform(centre_low, centre_high, 2) * size
    return _Placement(
        class_index=class_index,
        centre_x=float(centre_x),
        centre_y=float(centre_y),
        radius=float(side / np.sqrt(_unit_area(shape))),
        angle=float(rng.uniform(0.0, 2 * np.pi)),
    )


@dataclass
class _Layout:
    placements: list[_Placement]  # back to front
    masks: list[np.ndarray]
    areas: list[int]
    truncated: list[bool]
    main: int  # position of the labelled object in `placements`


def _paint_instances(masks: list[np.ndarray], size: int) -> np.ndarray:
    instances = np.zeros((size, size), dtype=np.int32)
    for number, mask in enumerate(masks, start=1):
        instances[mask] = number
    return instances


def _acceptable(layout: _Layout, size: int) -> bool:
    """The labelled object is clearly the largest visible one and every object keeps enough visible pixels."""
    instances = _paint_instances(layout.masks, size)
    count = len(layout.masks)
    visible = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    interior = np.bincount(instances[~boundary_band(instances, border_width(size))], minlength=count + 1)[1:]
    min_interior = max(4, round(0.002 * size * size))
    if np.any(visible < MIN_VISIBLE_FRACTION * np.asarray(layout.areas)) or np.any(interior < min_interior):
        return False
    others = np.delete(visible, layout.main)
    return others.size == 0 or visible[layout.main] >= LARGEST_MARGIN * others.max()


def _sample_layout(rng: np.random.Generator, size: int, label: int, composition: Composition) -> _Layout:
    """Place the labelled object, then the others at random depths; bad placements are redrawn."""
    main = _sample_placement(rng, size, label, composition, main=True)
    mask, area, truncated = _object_mask(main, size)
    layout = _Layout([main], [mask], [area], [truncated], main=0)
    for _ in range(int(rng.integers(*composition.others))):
        for _ in range(PLACEMENT_TRIES):
            other = int(rng.integers(len(CLASS_NAMES)))
            placement = _sample_placement(rng, size, other, composition, main=False)
            mask, area, truncated = _object_mask(placement, size)
            depth = int(rng.integers(len(layout.placements) + 1))
            trial = _Layout(
                placements=[*layout.placements[:depth], placement, *layout.placements[depth:]],
                masks=[*layout.masks[:depth], mask, *layout.masks[depth:]],
                areas=[*layout.areas[:depth], area, *layout.areas[depth:]],
                truncated=[*layout.truncated[:depth], truncated, *layout.truncated[depth:]],
                main=layout.main + (depth <= layout.main),
            )
            if _acceptable(trial, size):
                layout = trial
                break
    return layout


def _luminance(colour: np.ndarray) -> np.ndarray:
    return colour @ np.array([0.299, 0.587, 0.114])


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random colour and a second one at least 60 luminance levels away from it (texture contrast)."""
    first = rng.uniform(20.0, 235.0, 3)
    candidates = rng.uniform(0.0, 255.0, (8, 3))
    far = np.abs(_luminance(candidates) - _luminance(first)) >= 60.0
    extreme = np.full(3, 0.0 if _luminance(first) > 127.5 else 255.0)
    second = candidates[int(np.argmax(far))] if far.any() else extreme
    return first, second


def _upsampled_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth blotches in [0, 1]: a coarse random grid, bilinearly upsampled to size x size."""
    cells = int(rng.integers(3, 7))
    grid = rng.uniform(0.0, 1.0, (cells, cells))
    position = (np.arange(size) + 0.5) / size * (cells - 1)
    lower = np.minimum(np.floor(position).astype(np.int64), cells - 2)
    weight = position - lower
    rows = grid[lower] * (1 - weight)[:, None] + grid[lower + 1] * weight[:, None]
    return rows[:, lower] * (1 - weight)[None, :] + rows[:, lower + 1] * weight[None, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-contrast textured background: gradient, blotches, stripes or checks between two close colours."""
    base = rng.uniform(0.0, 255.0, 3)
    other = np.clip(base + rng.uniform(-45.0, 45.0, 3), 0.0, 255.0)
    kind = int(rng.integers(4))
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(0.06, 0.2) * size
    coords = np.arange(size) + 0.5
    along = coords[None, :] * np.cos(angle) + coords[:, None] * np.sin(angle)
    across = coords[:, None] * np.cos(angle) - coords[None, :] * np.sin(angle)
    if kind == 0:
        mix = (along - along.min()) / (along.max() - along.min())
    elif kind == 1:
        mix = _upsampled_noise(rng, size)
    elif kind == 2:
        mix = (np.floor(along / period) % 2).astype(np.float64)
    else:
        mix = ((np.floor(along / period) + np.floor(across / period)) % 2).astype(np.float64)
    return base * (1 - mix[..., None]) + other * mix[..., None]


def _texture_colours(
    rng: np.random.Generator, texture: str, dx: np.ndarray, dy: np.ndarray, side: float
) -> np.ndarray:
    """Colours of the pixels at offsets (dx, dy) from the object centre: two-colour pattern or shading."""
    first, second = _colour_pair(rng)
    angle = rng.uniform(0.0, np.pi)
    period = max(3.5, rng.uniform(0.2, 0.32) * side)
    along = (dx * np.cos(angle) + dy * np.sin(angle)) / period
    across = (dy * np.cos(angle) - dx * np.sin(angle)) / period
    if texture == "solid":
        shade = 1.0 + rng.uniform(-0.3, 0.3) * along * period / side
        return np.clip(first[None, :] * shade[:, None], 0.0, 255.0)
    if texture == "stripes":
        pattern = (along % 1.0) < 0.5
    elif texture == "checks":
        pattern = (np.floor(along) + np.floor(across)) % 2 == 0
    elif texture == "dots":
        pattern = ((along % 1.0) - 0.5) ** 2 + ((across % 1.0) - 0.5) ** 2 < 0.33**2
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(pattern[:, None], second[None, :], first[None, :])


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def render_scene(
    rng: np.random.Generator, size: int, label: int, composition: Composition = SCENE
) -> Scene:
    """Draw one scene whose largest visible object has class `label`; objects are painted back to front."""
    layout = _sample_layout(rng, size, label, composition)
    image = _background(rng, size)
    for placement, mask in zip(layout.placements, layout.masks, strict=True):
        rows, cols = np.nonzero(mask)
        shape, texture = shape_and_texture(placement.class_index)
        side = placement.radius * np.sqrt(_unit_area(shape))
        dx, dy = cols + 0.5 - placement.centre_x, rows + 0.5 - placement.centre_y
        image[rows, cols] = _texture_colours(rng, texture, dx, dy, side)
    image += rng.normal(0.0, rng.uniform(2.0, 6.0), image.shape)
    instances = _paint_instances(layout.masks, size)
    pairs = zip(layout.placements, layout.truncated, strict=True)
    objects = [
        SceneObject(placement.class_index, _tight_box(instances == number), truncated)
        for number, (placement, truncated) in enumerate(pairs, start=1)
    ]
    return Scene(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        instances=instances,
        objects=objects,
        label=label,
    )
