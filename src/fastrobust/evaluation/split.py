"""Clean and PGD accuracy of a model on a held split (validation or test).

This is the evaluation the training engine runs each epoch (validation,
PGD with CW loss, for checkpoint selection) and once at the end (test,
PGD-20 with CE loss, for ``summary.json``).
"""

from __future__ import annotations

import torch

from ..attacks import pgd, preserved_mode


def to_float(x_uint8: torch.Tensor, device) -> torch.Tensor:
    """uint8 images (N,C,H,W) to float [0,1] on ``device``."""
    return x_uint8.to(device, non_blocking=True).float().div_(255.0)


def evaluate_split(model, split, *, eps: float, steps: int, alpha: float, loss: str = "ce",
                   batch_size: int = 500, device="cpu", generator: torch.Generator | None = None,
                   norm: str = "linf") -> dict:
    """Clean and PGD-``steps`` accuracy (fractions) of ``model`` on ``split``.

    Runs in eval mode and restores the model's mode afterwards; eps = 0
    gives the clean accuracy twice. An empty split gives ``None`` accuracies.
    """
    n = len(split)
    if n == 0:
        return {"clean_acc": None, "robust_acc": None, "n": 0}
    clean = robust = 0
    with preserved_mode(model, eval_mode=True):
        for i in range(0, n, batch_size):
            x = to_float(split.x[i:i + batch_size], device)
            y = split.y[i:i + batch_size].to(device)
            with torch.no_grad():
                correct = (model(x).argmax(1) == y).sum().item()
            clean += correct
            if eps > 0:
                x_adv = pgd(model, x, y, eps, steps=steps, alpha=alpha, loss=loss, norm=norm, generator=generator)
                with torch.no_grad():
                    correct = (model(x_adv).argmax(1) == y).sum().item()
            robust += correct
    return {"clean_acc": clean / n, "robust_acc": robust / n, "n": n}
