"""Learning-rate and eps schedules, as functions of the fractional epoch t in [0, epochs].

The engine evaluates them once per minibatch (never per replay), at
t = epoch + batch_index / batches_per_epoch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    kind: str                 # multistep | cyclic | cosine | constant
    peak: float
    epochs: float
    milestones: tuple = ()
    gamma: float = 0.1
    peak_at: float = 0.4      # cyclic: where the triangle peaks, as a fraction of training

    def __call__(self, t: float) -> float:
        if self.kind == "multistep":
            return self.peak * self.gamma ** bisect.bisect_right(sorted(self.milestones), t)
        if self.kind == "cyclic":   # triangle: 0 -> peak (at 2/5 of training: Wong et al. 2020) -> 0
            top = self.peak_at * self.epochs
            return self.peak * (t / top if t <= top else max(0.0, (self.epochs - t) / (self.epochs - top)))
        if self.kind == "cosine":
            return self.peak * 0.5 * (1.0 + math.cos(math.pi * min(t, self.epochs) / self.epochs))
        return self.peak

    @classmethod
    def from_config(cls, cfg) -> "LRSchedule":
        return cls(cfg.lr_schedule, cfg.lr, cfg.epochs, tuple(cfg.lr_milestones or ()), cfg.lr_gamma, cfg.lr_peak)


def eps_scale(t: float, warmup_epochs: float) -> float:
    """Linear ramp of the attack radius from 0 to its full value over ``warmup_epochs``."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, t / warmup_epochs)
