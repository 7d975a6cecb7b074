"""Per-example losses that attacks maximise."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from fastrobust.errors import ConfigError


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` per example (positive iff misclassified)."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(1) - true


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Attack losses by name: ``(logits, y) -> per-example float32 loss``.
LOSSES: dict[str, LossFn] = {"ce": _cross_entropy, "cw": margin_loss}


def loss_fn(kind: str) -> LossFn:
    """The per-example loss named ``kind`` (see :data:`LOSSES`), else :class:`ConfigError`."""
    if kind not in LOSSES:
        raise ConfigError(f"unknown attack loss {kind!r}; allowed: {', '.join(LOSSES)}")
    return LOSSES[kind]


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example loss ``kind`` (``"ce"``: cross-entropy, ``"cw"``: :func:`margin_loss`), in float32."""
    return loss_fn(kind)(logits, y)
