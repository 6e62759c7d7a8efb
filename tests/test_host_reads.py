"""No host read inside a pretraining step (issue 18, DESIGN §5): a real `train()` on CPU (demo preset, tiny
synthetic data) with every way of reading a device tensor back to the host wrapped and counted per step.

Counted: Tensor.item / tolist / cpu / numpy / __bool__ / __float__ / __int__ / __index__; ops whose output
size depends on values (unique, nonzero, argwhere, masked_select, indexing with a boolean mask); tensors made
from host data (torch.tensor / as_tensor / Tensor.new_tensor of Python data, indexing with a Python list). On
a GPU each is a blocking copy; on the CPU all are cheap, which is why the test counts calls, not time.
Not counted: torch's own optimizers reading their step counters, which live on the CPU whatever the device
(capturable=False), recognised by the tensor's identity in the optimizer's state. Nested calls (a wrapped
call made by another wrapped call) count once. A step's window runs from its `_step` call to the next one,
the next epoch's shuffle or the final checkpoint, so it holds the logging and progress bar of that step.
"""

from __future__ import annotations

import functools
import traceback
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from torch import Tensor

from vicregl_cli.pretrain import loop
from vicregl_cli.pretrain.config import load_config

torch.set_num_threads(1)
TOTAL_STEPS, LOG_EVERY = 6, 4  # 24 images / batch 8 = 3 steps per epoch, 2 epochs; logging at steps 4 and 6
PACKAGE = str(Path(loop.__file__).resolve().parents[1])

TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
                  "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "new_tensor",
                  "__getitem__", "__setitem__")  # fmt: skip
TORCH_FUNCTIONS = ("tensor", "as_tensor", "unique", "unique_consecutive", "nonzero", "argwhere",
                   "masked_select")  # fmt: skip
HOST_DATA = ("tensor", "as_tensor", "new_tensor")  # count only when given host data, not a tensor
INDEXING = ("__getitem__", "__setitem__")  # count only a boolean mask or a Python sequence as the index


def _reads_host(name: str, args: tuple) -> bool:
    """Whether a call of the wrapped `name` with `args` reads device values (or copies host data to it)."""
    if name in HOST_DATA:
        data = args[1] if name == "new_tensor" else args[0]
        return not isinstance(data, Tensor)
    if name in INDEXING:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any((isinstance(part, Tensor) and part.dtype == torch.bool) or isinstance(part, list | tuple)
                   for part in index)  # fmt: skip
    return True


class HostReadCounter:
    """Counts host reads per step of train() (the step set by the wrapped `loop._step`); `where` keeps the
    innermost vicregl_cli line of each read, for the failure message."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.steps_started = 0
        self.reads: dict[int, list[str]] = defaultdict(list)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.depth = 0

    def optimizer_counter(self, tensor: object) -> bool:
        return any(state.get("step") is tensor for opt in self.optimizers for state in opt.state.values())

    def wrap(self, name: str, function):
        @functools.wraps(function)
        def counted(*args, **kwargs):
            if self.step is not None and self.depth == 0 and _reads_host(name, args):
                if not (name in ("item", "__float__") and self.optimizer_counter(args[0])):
                    self.reads[self.step].append(f"{name} at {self.caller()}")
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1

        return counted

    @staticmethod
    def caller() -> str:
        frames = [f for f in traceback.extract_stack()[:-2] if f.filename.startswith(PACKAGE)]
        if not frames:
            return "outside vicregl_cli"
        frame = frames[-1]
        return f"{Path(frame.filename).relative_to(Path(PACKAGE).parent)}:{frame.lineno} `{frame.line}`"


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    from vicregl_cli.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, num_train=24, num_val=12, image_size=48, seed=0, workers=1)
    return root / "classification" / "train"


def count_host_reads(monkeypatch, config) -> HostReadCounter:
    """Train `config` on the CPU with every host read wrapped; returns the counter."""
    counter = HostReadCounter()
    for name in TENSOR_METHODS:
        monkeypatch.setattr(Tensor, name, counter.wrap(name, getattr(Tensor, name)))
    for name in TORCH_FUNCTIONS:
        monkeypatch.setattr(torch, name, counter.wrap(name, getattr(torch, name)))
    step, build_optimizer, require_finite = loop._step, loop.build_optimizer, loop._require_finite_weights
    set_epoch = loop.EpochBatchSampler.set_epoch

    def counted_step(*args, **kwargs):
        counter.steps_started += 1
        counter.step = counter.steps_started
        return step(*args, **kwargs)

    def kept_optimizer(*args, **kwargs):
        counter.optimizers.append(build_optimizer(*args, **kwargs))
        return counter.optimizers[-1]

    def final_checkpoint(*args, **kwargs):  # the checkpoint's own reads are not a step's
        counter.step = None
        return require_finite(*args, **kwargs)

    def next_epoch(sampler, *args, **kwargs):  # nor the sampler's shuffle (a CPU generator) of the next epoch
        counter.step = None
        return set_epoch(sampler, *args, **kwargs)

    monkeypatch.setattr(loop, "_step", counted_step)
    monkeypatch.setattr(loop, "build_optimizer", kept_optimizer)
    monkeypatch.setattr(loop, "_require_finite_weights", final_checkpoint)
    monkeypatch.setattr(loop.EpochBatchSampler, "set_epoch", next_epoch)
    result = loop.train(config, device="cpu", command_line=["test"])
    monkeypatch.undo()
    assert (result.start_step, result.end_step) == (0, TOTAL_STEPS)
    return counter


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_a_step_reads_the_device_at_most_once(monkeypatch, train_dir, tmp_path, optimizer):
    config = load_config("demo", dict(
        data=str(train_dir), out=str(tmp_path / "run"), optimizer=optimizer, batch_size=8, epochs=2,
        warmup_epochs=1, log_every=LOG_EVERY, checkpoint_every=2,
    ))  # fmt: skip
    counter = count_host_reads(monkeypatch, config)
    reads = {step: counter.reads.get(step, []) for step in range(2, TOTAL_STEPS + 1)}
    print({step: len(found) for step, found in reads.items()})
    logging_steps = {LOG_EVERY, TOTAL_STEPS}
    too_many = {step: found for step, found in reads.items()
                if len(found) > (2 if step in logging_steps else 1)}  # fmt: skip
    assert not too_many, "host reads per step (at most 1; 2 on a logging step):\n" + "\n".join(
        f"step {step}: {len(found)}\n  " + "\n  ".join(found) for step, found in too_many.items()
    )
    # the one read of a step is the all-reduced [not finite, stop signal] flags; a logging step adds one copy
    # of its statistics
    for step, found in reads.items():
        assert [read.split(" at ")[0] for read in found] == ["tolist"] * (1 + (step in logging_steps)), found
