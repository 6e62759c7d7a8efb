"""A loader worker's batch stacked into one block of shared memory, written with one pwrite.

torch's default_collate gives each stacked tensor of a batch its own shared-memory file and writes it through
the mapping: a file per tensor (18 for a 2 × 224 + 6 × 96 batch) and a page fault per 4 kB written, which on
a virtual machine costs as much as the copy (benchmarks/bench_data.py: about 1 µs per kB). Here every tensor
goes into one shared file with pwrite — each crop from its own memory, the small tensors stacked first —: the
kernel copies into the file's pages without faulting them into the worker. The main process maps the file as
before.
"""

from __future__ import annotations

import os

import torch
import torch.multiprocessing
from torch import Tensor
from torch.utils.data import get_worker_info

_ALIGN = 64  # bytes: each tensor of the block starts on a cache line
_OWN_WRITE_BYTES = 16 * 1024  # tensors this large are written one by one, smaller ones stacked first


def _stacked_layout(parts: list[list[Tensor]]) -> tuple[list[tuple[int, torch.Size]], int]:
    """(byte offset, stacked shape) of each part in the block, and the block's size in bytes."""
    layout, total = [], 0
    for tensors in parts:
        shape = torch.Size((len(tensors), *tensors[0].shape))
        layout.append((total, shape))
        nbytes = shape.numel() * tensors[0].element_size()
        total += -(-nbytes // _ALIGN) * _ALIGN
    return layout, total


def stack_shared(parts: list[list[Tensor]]) -> list[Tensor]:
    """torch.stack of each list of same-shape CPU tensors; in a loader worker the results share one
    shared-memory block (default_collate's results sit in shared memory too), elsewhere plain stacks."""
    if get_worker_info() is None:
        return [torch.stack(tensors) for tensors in parts]
    layout, total = _stacked_layout(parts)
    shared = torch.UntypedStorage._new_shared(total)
    results = [
        torch.empty(0, dtype=tensors[0].dtype).set_(shared, offset // tensors[0].element_size(), shape)
        for tensors, (offset, shape) in zip(parts, layout, strict=True)
    ]
    if torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        for tensors, result in zip(parts, results, strict=True):
            torch.stack(tensors, out=result)
        return results
    fd, _ = shared._share_fd_cpu_()
    for tensors, (offset, _) in zip(parts, layout, strict=True):
        nbytes = tensors[0].nbytes
        if nbytes >= _OWN_WRITE_BYTES:  # a crop: from its own memory, no staging copy
            for index, tensor in enumerate(tensors):
                _write(fd, tensor, offset + index * nbytes)
        else:
            _write(fd, torch.stack(tensors), offset)
    return results


def _write(fd: int, tensor: Tensor, offset: int) -> None:
    """The bytes of `tensor`, in its contiguous layout (the stacked result's), into file `fd` at `offset`."""
    data, written = memoryview(tensor.contiguous().numpy()).cast("B"), 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)
