"""Image files to (3, H, W) uint8 RGB tensors for the pretraining loader: JPEGs through simplejpeg,
everything else through PIL.

simplejpeg and Pillow both decode with libjpeg-turbo at the same settings (integer DCT, fancy upsampling):
for YCbCr, RGB and grayscale JPEGs the pixels are PIL's exactly, without PIL's image object and the array
copy after it — 0.4 ms less per 500 × 375 image, a quarter of the decode (benchmarks/bench_data.py prints the
figures). CMYK / YCCK JPEGs, other formats and files simplejpeg refuses (truncated, corrupt) go through
readers.load_rgb, which also turns an unreadable file into a UserError naming it.
"""

from __future__ import annotations

from pathlib import Path

import simplejpeg
import torch
from torch import Tensor

from vicregl_cli.data.multicrop import to_uint8_image
from vicregl_cli.data.readers import load_rgb

JPEG_SIGNATURE = b"\xff\xd8\xff"
DECODED_COLOURSPACES = ("YCbCr", "RGB", "Gray")  # libjpeg-turbo converts these to RGB as Pillow does


def read_rgb_uint8(path: str | Path) -> Tensor:
    """readers.load_rgb(path)'s pixels as a (3, H, W) uint8 tensor (channels-last strides, as PIL's)."""
    with open(path, "rb") as file:  # not Path.read_bytes: its path parsing is a few % of a small decode
        data = file.read()
    if data.startswith(JPEG_SIGNATURE):
        try:
            if simplejpeg.decode_jpeg_header(data)[2] in DECODED_COLOURSPACES:
                return torch.from_numpy(simplejpeg.decode_jpeg(data, colorspace="RGB")).permute(2, 0, 1)
        except ValueError:
            pass  # truncated or corrupt: PIL names the file in its error
    return to_uint8_image(load_rgb(path))
