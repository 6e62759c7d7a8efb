"""The synthetic scenes in the COCO 2017 layout (`OUT/coco`): `annotations/instances_{train,val}2017.json`
and `train2017/`, `val2017/`. The images are the VOC layout's JPEG files (same bytes); each object's mask is
its exact painted region, re-drawn from the same per-image generator, stored as compressed RLE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vicregl_cli.data.scenes import CLASS_NAMES, SCENE, Scene, render_scene
from vicregl_cli.data.synthetic_index import image_id, image_label, image_rng
from vicregl_cli.errors import UserError

COCO_SPLITS = {"train": "train2017", "val": "val2017"}


def coco_categories() -> list[dict]:
    """One category per synthetic class, ids 1..12 in CLASS_NAMES order."""
    return [
        {"id": index + 1, "name": name, "supercategory": name.split("_")[0]}
        for index, name in enumerate(CLASS_NAMES)
    ]


def scene_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """COCO instance annotations of a scene: RLE of each object's visible pixels, bbox [x, y, w, h] of those
    pixels in pixel edges (VOC's inclusive box + 1), area = pixel count, iscrowd 0."""
    annotations = []
    for number, obj in enumerate(scene.objects, start=1):
        pixels = np.asfortranarray((scene.instances == number).astype(np.uint8))
        rle = mask_utils.encode(pixels)
        xmin, ymin, xmax, ymax = obj.box
        annotations.append(
            {
                "id": first_id + number - 1,
                "image_id": image_id,
                "category_id": obj.class_index + 1,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                "area": int(pixels.sum()),
                "bbox": [xmin, ymin, xmax - xmin + 1, ymax - ymin + 1],
                "iscrowd": 0,
            }
        )
    return annotations


def write_coco_layout(out: Path, counts: dict[str, int], seed: int, image_size: int) -> Path:
    """Write `out/coco` beside the VOC layout already in `out/VOC2012` (COCO image id = index + 1, file name
    the VOC image's). Scenes are re-drawn with the generator that drew the VOC images, so masks match them."""
    root = Path(out) / "coco"
    if root.exists():
        raise UserError(f"{root} already exists; remove it or choose another --out")
    (root / "annotations").mkdir(parents=True)
    for split, folder in COCO_SPLITS.items():
        (root / folder).mkdir()
        images, annotations = [], []
        for index in range(counts[split]):
            name = image_id(split, index)
            scene = render_scene(image_rng(seed, split, index, "voc"), image_size, image_label(index), SCENE)
            file_name = f"{name}.jpg"
            shutil.copyfile(Path(out) / "VOC2012" / "JPEGImages" / file_name, root / folder / file_name)
            height, width = scene.instances.shape
            images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
            annotations += scene_annotations(scene, index + 1, len(annotations) + 1)
        content = {
            "info": {"description": "vicregl synthetic scenes", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        }
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(content))
    return root
