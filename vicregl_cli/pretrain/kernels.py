"""Kernel choices of a CUDA training run: cuDNN autotuning and TensorFloat-32 for convolutions only.

cudnn.benchmark times the convolution algorithms on the first batch of each shape and keeps the fastest (a
pretraining run has one or two crop shapes). Convolutions may use TF32 tensor cores (10-bit mantissa inputs,
fp32 accumulation: the precision PyTorch already defaults to for cuDNN); matrix products keep full fp32
("ieee"), so the criterion's covariances, computed in fp32 with autocast off (losses.py), stay as exact as on
the CPU, and the fp32 expander / projector layers too. Under bf16 / fp16 autocast these flags change nothing
but the convolution algorithm choice. Set through PyTorch's fp32_precision API (the allow_tf32 flags are
deprecated since 2.9).
"""

from __future__ import annotations

import torch


def tune_cuda_kernels(device: str) -> None:
    """cuDNN autotuning and TF32 convolutions on a CUDA device; nothing on the CPU."""
    if not device.startswith("cuda"):
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
