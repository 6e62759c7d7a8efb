"""The torchvision engine's hyper-parameters (C4 on VOC, Mask R-CNN FPN on COCO), as the CLI and the sweep
records carry them."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class DetectionSettings:
    """The engine's hyper-parameters (defaults: the VOC07+12 C4 benchmark, 24k iterations, batch 16; COCO's
    schedule comes from `coco_schedule`); None = auto. `frozen`: VICRegL Table 9's Linear Det. (the ResNet,
    res5 head included, frozen). A checkpoint is written every `checkpoint_every` iterations."""

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
    frozen: bool = False
    detections_per_image: int = 100  # detectron2's TEST.DETECTIONS_PER_IMAGE
    checkpoint_every: int = 1000

    def coco_schedule(self) -> DetectionSettings:
        """Mask R-CNN 1x: steps at 60k / 80k of 90k (fractions of `iters`), 1000 warm-up iterations."""
        return replace(self, warmup_iters=1000, step_fractions=(60000 / 90000, 80000 / 90000))

    @property
    def lr(self) -> float:
        return 0.02 * self.batch_size / 16 if self.base_lr is None else self.base_lr

    def steps(self) -> tuple[int, ...]:
        return tuple(round(fraction * self.iters) for fraction in self.step_fractions)

    def warmup(self) -> int:
        """The warm-up length: 100 iterations, capped at a tenth of a shortened schedule."""
        return min(self.warmup_iters, max(1, self.iters // 10))
