"""Accuracy under attack."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fastrobust.attacks.mode import preserved_mode
from fastrobust.errors import ConfigError

#: ``attack(model, x, y) -> x_adv``, e.g. ``functools.partial(pgd, eps=8/255)``.
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, batch_size: int = 256
) -> float:
    """Fraction in ``[0, 1]`` of ``attack(model, x, y)`` (``x`` itself if ``attack`` is None)
    classified as ``y``, in batches of ``batch_size`` moved to the model's device.

    The model runs in eval mode; the mode of every submodule is restored afterwards.
    """
    if len(x) == 0 or len(x) != len(y):
        raise ConfigError(f"robust_accuracy needs as many labels as inputs (at least one); got {len(x)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = next(model.parameters(), x).device
    correct = 0
    with preserved_mode(model, eval_mode=True):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad():
                correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(x)
