"""Weight averaging (``--wa TAU``): an exponential moving average of the model's parameters and buffers.

After every optimizer step ``avg = decay * avg + (1 - decay) * current`` for each parameter and each
floating-point buffer, with ``decay = min(tau, (1 + n) / (warmup + n))`` after ``n`` updates: early
on, while the first weights are far from good ones, the average follows the model closely (``warmup``
= 0 gives ``decay = tau`` from the first step). BatchNorm's running mean and variance are averaged
like the weights: they then describe the averaged network's own activations about as well as the
raw network's do its (integer buffers, e.g. ``num_batches_tracked``, are copied). Everything stays on
the device and no host read happens per step. Under torchrun every process holds the same weights
after each step, so the averages stay identical too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """The running average of ``model``'s state (a detached copy on the same device)."""

    def __init__(self, model: nn.Module, tau: float, warmup: float = 10.0):
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must lie in (0, 1), got {tau!r}")
        self.tau, self.warmup = float(tau), float(warmup)
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay(self) -> float:
        """The weight of the average in the next update."""
        n = self.updates
        return self.tau if self.warmup <= 0 else min(self.tau, (1.0 + n) / (self.warmup + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state into the average (call after each optimizer step)."""
        d = self.decay()
        floats, currents, others = [], [], []
        for key, value in model.state_dict().items():
            avg = self.state[key]
            if avg.is_floating_point():
                floats.append(avg)
                currents.append(value.detach())
            else:
                others.append((avg, value))
        if floats:
            torch._foreach_lerp_(floats, currents, 1.0 - d)
        for avg, value in others:
            avg.copy_(value)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the averaged weights; its own come back afterwards."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"tau": self.tau, "warmup": self.warmup, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        self.tau, self.warmup, self.updates = float(saved["tau"]), float(saved["warmup"]), int(saved["updates"])
        for key, value in saved["state"].items():
            self.state[key].copy_(value)
