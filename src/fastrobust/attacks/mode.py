"""Running a model in a temporary train/eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def preserved_mode(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (if ``eval_mode``) for the block, then restore the
    train/eval flag of every submodule exactly as it was, even on an exception."""
    modes = [m.training for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for module, mode in zip(model.modules(), modes):
            module.training = mode
