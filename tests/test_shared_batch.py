"""stack_shared: a loader worker's batch in one shared-memory block, equal to torch.stack part by part."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing
from torch.utils.data import DataLoader

from vicregl_cli.data import shared_batch
from vicregl_cli.data.shared_batch import stack_shared

torch.set_num_threads(1)


def _parts(seed: int) -> list[list[torch.Tensor]]:
    """Crops large enough to be written one by one (uint8 (S, S, 3), one of them not contiguous), small float
    positions and int64 labels, whose sizes are not multiples of the block's alignment."""
    generator = torch.Generator().manual_seed(seed)
    crops = [torch.randint(0, 256, (96, 96, 3), dtype=torch.uint8, generator=generator) for _ in range(2)]
    crops.append(torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=generator).permute(1, 2, 0))
    positions = [torch.rand(9, 2, generator=generator) for _ in range(3)]
    return [crops, positions, [torch.arange(3, dtype=torch.long) + seed]]


@pytest.mark.parametrize("strategy", ["file_descriptor", "file_system"])
def test_worker_block_equals_torch_stack(monkeypatch: pytest.MonkeyPatch, strategy: str) -> None:
    monkeypatch.setattr(shared_batch, "get_worker_info", lambda: object())
    monkeypatch.setattr(torch.multiprocessing, "get_sharing_strategy", lambda: strategy)
    parts = _parts(seed=1)
    stacked = stack_shared(parts)
    storage = stacked[0].untyped_storage()
    assert storage.is_shared() and storage.nbytes() == 3 * 96 * 96 * 3 + 256 + 64  # 27,648-byte crops
    for result, tensors in zip(stacked, parts, strict=True):
        assert result.untyped_storage().data_ptr() == storage.data_ptr()
        assert result.dtype == tensors[0].dtype and result.is_contiguous()
        assert torch.equal(result, torch.stack(tensors))
    assert stacked[1].storage_offset() * 4 == 3 * 96 * 96 * 3
    assert stacked[2].storage_offset() * 8 == 3 * 96 * 96 * 3 + 256


def test_outside_a_worker_plain_stacks() -> None:
    parts = _parts(seed=2)
    stacked = stack_shared(parts)
    assert not stacked[0].is_shared()
    assert all(torch.equal(r, torch.stack(t)) for r, t in zip(stacked, parts, strict=True))


class _Batches(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> list[list[torch.Tensor]]:
        return _parts(seed=index)


def _collate(batch: list[list[list[torch.Tensor]]]) -> list[torch.Tensor]:
    return stack_shared(batch[0])


def test_through_a_loader_worker() -> None:
    loader = DataLoader(_Batches(), batch_size=1, num_workers=1, collate_fn=_collate)
    for index, stacked in enumerate(loader):
        expected = [torch.stack(tensors) for tensors in _parts(seed=index)]
        assert all(r.is_shared() for r in stacked)
        assert all(torch.equal(r, e) for r, e in zip(stacked, expected, strict=True))
