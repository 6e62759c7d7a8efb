"""The synthetic dataset on disk: scenes (vicregl_cli.data.scenes) written in the ImageFolder layout (an
object-centric render of each label) and the Pascal VOC layout (the multi-object scene). Every image has its
own seed derived from (seed, split, index, layout): the bytes do not depend on the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from vicregl_cli.data.readers import parse_voc_xml
from vicregl_cli.data.scenes import (
    CLASS_NAMES,
    OBJECT_CENTRIC,
    SCENE,
    Scene,
    border_width,
    boundary_band,
    render_scene,
)
from vicregl_cli.data.synthetic_coco import write_coco_layout
from vicregl_cli.data.synthetic_index import SPLITS, image_id, image_label, image_rng
from vicregl_cli.errors import UserError
from vicregl_cli.progress import track

MIN_IMAGE_SIZE = 32


def segmentation_mask(scene: Scene) -> np.ndarray:
    """VOC class mask: 0 background, k = class k (line k of classes.txt), 255 on the band along contours."""
    lookup = np.array([0] + [obj.class_index + 1 for obj in scene.objects], dtype=np.uint8)
    mask = lookup[scene.instances]
    mask[boundary_band(scene.instances, border_width(scene.instances.shape[0]))] = 255
    return mask


@cache
def voc_palette() -> tuple[int, ...]:
    """The Pascal VOC colour map (768 values): index bits spread over the high bits of R, G and B."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [red, green, blue]
    return tuple(palette)


def voc_xml(image_id: str, scene: Scene) -> str:
    """The annotation as VOC writes it: 1-based inclusive pixel boxes of the visible pixels, difficult 0."""
    height, width = scene.instances.shape
    objects = "".join(
        "\t<object>\n"
        f"\t\t<name>{CLASS_NAMES[obj.class_index]}</name>\n"
        "\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>{int(obj.truncated)}</truncated>\n"
        "\t\t<difficult>0</difficult>\n"
        "\t\t<bndbox>\n"
        f"\t\t\t<xmin>{obj.box[0] + 1}</xmin>\n"
        f"\t\t\t<ymin>{obj.box[1] + 1}</ymin>\n"
        f"\t\t\t<xmax>{obj.box[2] + 1}</xmax>\n"
        f"\t\t\t<ymax>{obj.box[3] + 1}</ymax>\n"
        "\t\t</bndbox>\n"
        "\t</object>\n"
        for obj in scene.objects
    )
    return (
        "<annotation>\n"
        "\t<folder>VOC2012</folder>\n"
        f"\t<filename>{image_id}.jpg</filename>\n"
        "\t<source>\n\t\t<database>vicregl synthetic scenes</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>1</segmented>\n"
        f"{objects}"
        "</annotation>\n"
    )


def _write_image(job: tuple[str, str, int, int, int]) -> None:
    out, split, index, seed, size = job
    root = Path(out)
    name = image_id(split, index)
    label = image_label(index)
    centred = render_scene(image_rng(seed, split, index, "classification"), size, label, OBJECT_CENTRIC)
    classified = root / "classification" / split / CLASS_NAMES[label] / f"{name}.png"
    Image.fromarray(centred.image, mode="RGB").save(classified, format="PNG")
    scene = render_scene(image_rng(seed, split, index, "voc"), size, label, SCENE)
    image = Image.fromarray(scene.image, mode="RGB")
    voc = root / "VOC2012"
    image.save(voc / "JPEGImages" / f"{name}.jpg", format="JPEG", quality=95, subsampling=0)
    mask = Image.fromarray(segmentation_mask(scene), mode="L")
    mask.putpalette(voc_palette())
    mask.save(voc / "SegmentationClass" / f"{name}.png", format="PNG")
    (voc / "Annotations" / f"{name}.xml").write_text(voc_xml(name, scene))


def check_arguments(out: Path, num_train: int, num_val: int, image_size: int, workers: int) -> None:
    """Every argument error before a file is written (`vicregl synth --dry-run` runs only this)."""
    classes = len(CLASS_NAMES)
    if num_train < classes or num_val < classes:
        raise UserError(
            f"--num-train and --num-val must each be at least {classes} (one image per class); "
            f"got {num_train} and {num_val}"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE} pixels; got {image_size}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1; got {workers}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    existing = [out / name for name in ("classification", "VOC2012") if (out / name).exists()]
    if existing:
        raise UserError(f"{existing[0]} already exists; remove it or choose another --out")


def _make_folders(out: Path) -> None:
    for split in SPLITS:
        for name in CLASS_NAMES:
            (out / "classification" / split / name).mkdir(parents=True)
    voc = out / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir()


CLASSIFICATION_SPLITS = {"train": "trainval", "val": "test"}  # VOC07 classification split of each split


def write_classification_lists(voc: Path, counts: dict[str, int]) -> None:
    """`ImageSets/Main/<class>_{trainval,test}.txt` as the VOC devkit writes them ("<id> -1" absent, "<id>  1"
    present among the annotated objects; never 0, as no object is difficult) and `{trainval,test}.txt`:
    train is trainval, val is test (`vicregl svm`)."""
    main = voc / "ImageSets" / "Main"
    for split, name in CLASSIFICATION_SPLITS.items():
        ids = [image_id(split, index) for index in range(counts[split])]
        annotations = [parse_voc_xml(voc / "Annotations" / f"{i}.xml", CLASS_NAMES) for i in ids]
        present = [set(annotation.labels.tolist()) for annotation in annotations]
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for index, class_name in enumerate(CLASS_NAMES):
            flags = [1 if index in classes else -1 for classes in present]
            lines = "".join(f"{i} {flag:2d}\n" for i, flag in zip(ids, flags, strict=True))
            (main / f"{class_name}_{name}.txt").write_text(lines)


def generate(
    out: Path, num_train: int, num_val: int, image_size: int = 96, seed: int = 0, workers: int = 2
) -> None:
    """Write `num_train` + `num_val` scenes to `out/classification` (ImageFolder) and `out/VOC2012`."""
    out = Path(out)
    check_arguments(out, num_train, num_val, image_size, workers)
    _make_folders(out)
    counts = {"train": num_train, "val": num_val}
    jobs = [(str(out), split, index, seed, image_size) for split in SPLITS for index in range(counts[split])]
    with track("synth", total=len(jobs), log_every=max(1, len(jobs) // 10)) as tracker:
        if workers == 1:
            for job in jobs:
                _write_image(job)
                tracker.advance()
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                chunk = max(1, min(64, len(jobs) // (4 * workers)))
                for _ in pool.map(_write_image, jobs, chunksize=chunk):
                    tracker.advance()
    voc = out / "VOC2012"
    (voc / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES))
    for split in SPLITS:
        listing = "".join(f"{image_id(split, index)}\n" for index in range(counts[split]))
        for sub in ("Segmentation", "Main"):
            (voc / "ImageSets" / sub / f"{split}.txt").write_text(listing)
    write_classification_lists(voc, counts)
    write_coco_layout(out, counts, seed, image_size)
