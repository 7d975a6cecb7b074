"""Validation and test accuracy during training: clean and PGD accuracy of a model on a held split.

The engine runs :func:`evaluate_sharded` after each epoch (validation, PGD with CW
loss, for checkpoint selection) and once at the end (test, PGD-20 with CE loss,
for ``summary.json``), shared out among the processes under torchrun.
(The full robustness evaluation, ``fastrobust eval``, is :mod:`fastrobust.evaluation`.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..attacks import pgd, preserved_mode
from .distributed import Dist, derived_seed


def to_float(x_uint8: torch.Tensor, device) -> torch.Tensor:
    """uint8 images (N,C,H,W) to float [0,1] on ``device``."""
    return x_uint8.to(device, non_blocking=True).float().div_(255.0)


def evaluate_split(model, split, *, eps: float, steps: int, alpha: float, loss: str = "ce",
                   batch_size: int = 500, device="cpu", generator: torch.Generator | None = None,
                   norm: str = "linf", random_start: bool = True) -> dict:
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
                x_adv = pgd(model, x, y, eps, steps=steps, alpha=alpha, loss=loss, norm=norm, generator=generator,
                            random_start=random_start)
                with torch.no_grad():
                    correct = (model(x_adv).argmax(1) == y).sum().item()
            robust += correct
    return {"clean_acc": clean / n, "robust_acc": robust / n, "n": n}


def evaluate_sharded(model: nn.Module, split, dist_: Dist, *, seed: int, tag: str, eps: float, steps: int,
                     alpha: float, loss: str = "ce", batch_size: int = 500, device="cpu", norm: str = "linf",
                     random_start: bool = True) -> dict:
    """Clean and PGD accuracy of ``model`` on ``split``, shared out among the processes.

    The split is cut into chunks of ``batch_size`` examples; chunk c goes to
    process ``c mod world_size`` and its PGD random start comes from a generator
    seeded by ``(seed, tag, c)``. So the result depends only on the weights, the
    data and the seed: N processes give exactly the numbers of one (on the same
    kind of device). Returns fractions and ``n`` as :func:`evaluate_split` does.
    """
    n = len(split)
    if n == 0:
        return {"clean_acc": None, "robust_acc": None, "n": 0}
    device = torch.device(device)
    counts = torch.zeros(2, dtype=torch.float64, device=dist_.device)
    for chunk in range(dist_.rank, math.ceil(n / batch_size), dist_.world_size):
        part = split.subset(slice(chunk * batch_size, (chunk + 1) * batch_size))
        gen = torch.Generator(device=device).manual_seed(derived_seed(seed, tag, chunk))
        r = evaluate_split(model, part, eps=eps, steps=steps, alpha=alpha, loss=loss, batch_size=batch_size,
                           device=device, generator=gen, norm=norm, random_start=random_start)
        counts += torch.tensor([round(r["clean_acc"] * r["n"]), round(r["robust_acc"] * r["n"])],
                               dtype=torch.float64, device=dist_.device)
    clean, robust = dist_.all_reduce_sum(counts).tolist()
    return {"clean_acc": clean / n, "robust_acc": robust / n, "n": n}
