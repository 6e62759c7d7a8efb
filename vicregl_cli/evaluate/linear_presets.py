"""The linear probe's settings: its learning-rate schedules (per-epoch cosine to 0, or step decay at
milestones) and its presets: the ImageNet protocol (the default) and VICReg appendix B.3's Places205 and
iNaturalist 2018 transfers. A preset is a set of defaults: every flag the user gives explicitly beats it."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from vicregl_cli.errors import UserError
from vicregl_cli.evaluate.classification import cosine_factor

SCHEDULES = ("cosine", "step")
DATASETS = ("imagefolder", "places205", "inat18")
# The papers' grid and 0.02: the linear lr of the official README (ResNets) and of VICReg appendix B.2
DEFAULT_LRS = (30.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.02, 0.01)


@dataclass(frozen=True)
class LrSchedule:
    """The learning-rate multiplier of each (0-based) epoch: cosine from 1 to 0 over `epochs`, or step:
    multiplied by `gamma` at each milestone (torch's MultiStepLR: milestone 4 means epochs 4, 5, ... use
    the first decayed rate)."""

    kind: str = "cosine"
    epochs: int = 100
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def check(self) -> None:
        """Option errors: a known kind; step needs increasing milestones inside 1..epochs-1 and gamma > 0."""
        if self.kind not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if self.kind == "cosine":
            if self.milestones:
                raise UserError("--milestones needs --schedule step (the cosine schedule has no milestones)")
            return
        if not self.milestones:
            raise UserError("--schedule step needs --milestones, e.g. --milestones 4 8 12")
        steps = list(self.milestones)
        if steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] >= self.epochs:
            raise UserError(
                f"--milestones must increase strictly within 1..{self.epochs - 1} (epochs {self.epochs}), "
                f"got {steps}"
            )
        if self.gamma <= 0:
            raise UserError(f"--gamma must be positive, got {self.gamma}")

    def factor(self, epoch: int) -> float:
        """The multiplier of the base learning rate during epoch `epoch` (0-based)."""
        if self.kind == "cosine":
            return cosine_factor(epoch, self.epochs)
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def describe(self, lr: float) -> str:
        """The schedule of base rate `lr` in words, as --dry-run prints it."""
        if self.kind == "cosine":
            return f"cosine per epoch from {lr:g} to 0 over {self.epochs} epochs"
        bounds = (0, *self.milestones, self.epochs)
        spans = [
            f"epochs {start}-{end - 1}: {lr * self.factor(start):.4g}"
            for start, end in pairwise(bounds)
        ]
        return "step: " + ", ".join(spans)


@dataclass(frozen=True)
class LinearPreset:
    """A protocol's defaults: the dataset reader, the lr grid, the optimiser and its schedule."""

    dataset: str
    lrs: tuple[float, ...]
    epochs: int
    weight_decay: float
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    batch_size: int = 256
    momentum: float = 0.9


PRESETS: dict[str, LinearPreset] = {
    # DESIGN §3: the VICReg / VICRegL ImageNet linear evaluation (cosine, 100 epochs, wd 1e-6)
    "imagenet": LinearPreset(dataset="imagefolder", lrs=DEFAULT_LRS, epochs=100, weight_decay=1e-6),
    # VICReg appendix B.3: SGD lr 0.003, momentum 0.9, wd 1e-4, batch 256, 28 epochs, lr / 10 at 4, 8, 12
    "places205": LinearPreset(
        dataset="places205", lrs=(0.003,), epochs=28, weight_decay=1e-4, schedule="step",
        milestones=(4, 8, 12),
    ),
    # VICReg appendix B.3: SGD lr 0.005, momentum 0.9, wd 1e-4, batch 256, 84 epochs, lr / 10 at 24, 48, 72
    "inat18": LinearPreset(
        dataset="inat18", lrs=(0.005,), epochs=84, weight_decay=1e-4, schedule="step",
        milestones=(24, 48, 72),
    ),
}


def preset_settings(preset: str | None, **explicit: Any) -> dict[str, Any]:
    """The preset's fields (default "imagenet") with every explicit value (not None) put over them. A
    cosine schedule chosen explicitly drops the preset's milestones (they belong to its step schedule)."""
    name = preset or "imagenet"
    if name not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    unknown = set(explicit) - {field.name for field in dataclasses.fields(LinearPreset)}
    if unknown:
        raise TypeError(f"not preset fields: {sorted(unknown)}")
    settings = dataclasses.asdict(PRESETS[name])
    settings.update({key: value for key, value in explicit.items() if value is not None})
    if settings["schedule"] == "cosine" and explicit.get("milestones") is None:
        settings["milestones"] = ()
    if settings["dataset"] not in DATASETS:
        raise UserError(f"--dataset must be one of {', '.join(DATASETS)}, got {settings['dataset']!r}")
    return settings
