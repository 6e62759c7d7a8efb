"""Detection samples (VOC-layout reading here, COCO in coco.py), the image dataset and detectron2's training
stream (aspect-grouped, seeded, resumable at any batch)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from vicregl_cli.data.readers import VOC_CLASSES, parse_voc_xml, read_split, voc_class_names
from vicregl_cli.errors import UserError
from vicregl_cli.interrupts import ignore_stop_signals
from vicregl_cli.transfer.tv_detection.settings import DetectionSettings

VOC_DATASETS = ("voc", "voc0712")


@dataclass
class Sample:
    """One image of a split: its id (VOC: the split file's name; COCO: the image id), its file and its parsed
    annotation; `segmentations` (COCO only) holds each object's COCO segmentation, decoded when loaded."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    segmentations: list | None = None


@dataclass
class DetectionData:
    """Train and test samples plus the class names (labels index them; the model adds background as 0);
    COCO: the category id of each label and the test split's annotation file (for COCOeval)."""

    train: list[Sample]
    test: list[Sample]
    class_names: list[str]
    category_ids: tuple[int, ...] = ()
    annotations: Path | None = None

    @property
    def has_masks(self) -> bool:
        return bool(self.train) and self.train[0].segmentations is not None


def check_voc_root(root: Path) -> Path:
    """A VOC-layout folder must hold Annotations/ and ImageSets/Main/ (and JPEGImages/)."""
    root = Path(root).expanduser()
    missing = [sub for sub in ("Annotations", "ImageSets/Main", "JPEGImages") if not (root / sub).is_dir()]
    if missing:
        nested = (
            sorted(p.name for p in root.glob("*") if (p / "Annotations").is_dir()) if root.is_dir() else []
        )
        hint = f"; did you mean {root / nested[0]}?" if nested else ""
        raise UserError(f"{root} is not a VOC-layout folder: it lacks {', '.join(missing)}{hint}")
    return root


def read_voc_split(voc_root: Path, split: str, class_names: list[str]) -> list[Sample]:
    """Parse every annotation of ImageSets/Main/<split>.txt up front (unknown class names fail here)."""
    samples = []
    for image_id in read_split(voc_root, "Main", split):
        annotation = parse_voc_xml(voc_root / "Annotations" / f"{image_id}.xml", class_names)
        image_path = voc_root / "JPEGImages" / annotation.filename
        if not image_path.is_file():
            raise UserError(f"image {image_path} (named by {image_id}.xml) does not exist")
        samples.append(
            Sample(
                image_id,
                image_path,
                annotation.width,
                annotation.height,
                annotation.boxes,
                annotation.labels,
                annotation.difficult,
            )
        )
    return samples


def load_voc_data(dataset: str, data_root: Path) -> DetectionData:
    """`voc`: one VOC folder, train -> val; `voc0712`: VOCdevkit, VOC2007+2012 trainval -> VOC2007 test."""
    data_root = Path(data_root).expanduser()
    if dataset == "voc":
        root = check_voc_root(data_root)
        names = voc_class_names(root)
        train, test = read_voc_split(root, "train", names), read_voc_split(root, "val", names)
    else:
        roots = {year: check_voc_root(data_root / f"VOC{year}") for year in ("2007", "2012")}
        names = list(VOC_CLASSES)
        train = read_voc_split(roots["2007"], "trainval", names) + read_voc_split(
            roots["2012"], "trainval", names
        )
        test = read_voc_split(roots["2007"], "test", names)
    train = [sample for sample in train if len(sample.labels)]  # detectron2 drops images without objects
    if not train:
        raise UserError(f"no training image of {data_root} has an object")
    return DetectionData(train=train, test=test, class_names=names)


def decode_masks(segmentations: list, height: int, width: int) -> np.ndarray:
    """(N, H, W) uint8 masks of COCO segmentations: polygon lists, uncompressed or compressed RLE."""
    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for index, segmentation in enumerate(segmentations):
        if isinstance(segmentation, list):  # polygons of one object
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        masks[index] = mask_utils.decode(rle)
    return masks


class DetectionImages(torch.utils.data.Dataset):
    """Items addressed by (index, flip): RGB float image in [0, 1] and the torchvision target (labels + 1;
    COCO samples add `masks`, N x H x W uint8)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[Tensor, dict[str, Tensor]]:
        index, flip = item
        sample = self.samples[index]
        with Image.open(sample.image_path) as image:
            pixels = pil_to_tensor(image.convert("RGB")).float() / 255.0
        boxes = torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)
        if flip:
            pixels = pixels.flip(-1)
            boxes = torch.stack(
                [pixels.shape[-1] - boxes[:, 2], boxes[:, 1], pixels.shape[-1] - boxes[:, 0], boxes[:, 3]],
                dim=1,
            )
        target = {"boxes": boxes, "labels": torch.as_tensor(sample.labels, dtype=torch.int64) + 1}
        if sample.segmentations is not None:
            masks = torch.from_numpy(decode_masks(sample.segmentations, sample.height, sample.width))
            target["masks"] = masks.flip(-1) if flip else masks
        return pixels, target


class AspectGroupedBatches:
    """detectron2's training stream: an endless seeded shuffle, images grouped into batches of one orientation
    (landscape or portrait), each image flipped horizontally with probability 0.5."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int) -> None:
        self.landscape = [sample.width > sample.height for sample in samples]
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        buckets: dict[bool, list[tuple[int, bool]]] = {True: [], False: []}
        while True:
            order = torch.randperm(len(self.landscape), generator=self.generator).tolist()
            flips = (torch.rand(len(order), generator=self.generator) < 0.5).tolist()
            for index, flip in zip(order, flips, strict=True):
                bucket = buckets[self.landscape[index]]
                bucket.append((index, flip))
                if len(bucket) == self.batch_size:
                    yield list(bucket)
                    bucket.clear()


def collate(batch: list) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images stay a list (each keeps its own size); torchvision's transform resizes and batches them."""
    return [image for image, _ in batch], [target for _, target in batch]


def train_loader(samples: list[Sample], settings: DetectionSettings, start: int = 0) -> Iterator:
    """The endless iterator of (images, targets) training batches that `settings` describes, from batch
    `start` on (a resumed run skips the batches it trained on: index lists only, no image is read)."""
    batches = AspectGroupedBatches(samples, settings.batch_size, settings.seed)
    loader = torch.utils.data.DataLoader(
        DetectionImages(samples),
        batch_sampler=itertools.islice(batches, start, None),
        num_workers=settings.workers,
        collate_fn=collate,
        persistent_workers=settings.workers > 0,
        worker_init_fn=ignore_stop_signals,  # a signal to the job's process group: the main process decides
    )
    return iter(loader)
