"""The demo's baseline: a random-init backbone, its BatchNorm statistics re-estimated on the training images
(as `knn --weights random` does), saved once so that k-NN, linear and segmentation all see the same one.

Usage: python scripts/demo_random_init.py BACKBONE SEED TRAIN_FOLDER IMAGE_SIZE OUT_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

from vicregl_cli.backbones import resolve_weights, save_backbone
from vicregl_cli.data.readers import image_folder
from vicregl_cli.evaluate.features import eval_transform, recalibrate_batchnorm


def main(backbone: str, seed: int, train: Path, image_size: int, out: Path) -> None:
    model = resolve_weights("random", backbone, seed).build()
    images = image_folder(train, eval_transform(image_size, image_size))
    used = recalibrate_batchnorm(model, images, num_batches=100, batch_size=200, seed=seed)
    save_backbone(out, backbone, model.state_dict())
    print(f"random-init {backbone} (seed {seed}), BatchNorm re-estimated on {used} images: {out}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
