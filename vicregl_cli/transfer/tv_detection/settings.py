"""The C4 benchmark's hyper-parameters, as the CLI and the sweep records carry them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DetectionSettings:
    """The C4 benchmark's hyper-parameters (defaults: VOC07+12, 24k iterations, batch 16); None = auto."""

    iters: int = 24000
    batch_size: int = 16
    base_lr: float | None = None  # None: 0.02 x batch_size / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    step_fractions: tuple[float, float] = (18000 / 24000, 22000 / 24000)
    min_sizes: tuple[int, ...] | None = None
    test_size: int | None = None
    max_size: int | None = None
    rpn_batch_per_image: int | None = None
    rois_per_image: int | None = None
    proposals_train: int | None = None
    proposals_test: int | None = None
    precise_bn_iters: int = 200
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    log_every: int = 20

    @property
    def lr(self) -> float:
        return 0.02 * self.batch_size / 16 if self.base_lr is None else self.base_lr

    def steps(self) -> tuple[int, ...]:
        return tuple(round(fraction * self.iters) for fraction in self.step_fractions)

    def warmup(self) -> int:
        """The warm-up length: 100 iterations, capped at a tenth of a shortened schedule."""
        return min(self.warmup_iters, max(1, self.iters // 10))
