"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015;
with a random start, Wong et al. 2020), in pixel space.

Only the input gradient is computed (``torch.autograd.grad`` w.r.t. the input),
so the model's parameters, their ``.grad`` and ``requires_grad`` flags are never
touched. Losses are computed in float32 from the logits, so the attacks work
under ``torch.autocast``.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from fastrobust.attacks.kernel import EarlyStop, ascend, summed, summed_ce
from fastrobust.attacks.losses import LOSSES, LossFn, loss_fn
from fastrobust.attacks.mode import preserved_mode
from fastrobust.attacks.projection import THREAT_MODELS, ThreatModel, per_example, threat_model
from fastrobust.errors import ConfigError


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    alpha: float | None = None,
    random_start: bool = False,
    loss: str = "ce",
    eval_mode: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One L-inf signed-gradient step of size ``alpha`` (default ``eps``), from ``x`` or
    from a uniform random start, projected onto the ``eps`` ball and ``[0, 1]``.
    See :func:`pgd` for the arguments."""
    alpha = eps if alpha is None else alpha
    return pgd(model, x, y, eps, steps=1, alpha=alpha, loss=loss, random_start=random_start,
               eval_mode=eval_mode, generator=generator)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 10,
    alpha: float | None = None,
    norm: str = "linf",
    loss: str = "ce",
    random_start: bool = True,
    restarts: int = 1,
    early_stop: bool = False,
    eval_mode: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial examples ``x_adv`` maximising ``loss`` within ``||x_adv - x|| <= eps`` and ``[0, 1]``.

    Args:
        model: classifier of ``[0, 1]`` pixels returning logits.
        x, y: clean inputs ``(B, ...)`` and labels ``(B,)``.
        eps: radius of the ``norm`` ball.
        steps: gradient steps per restart.
        alpha: step size, default ``2.5 * eps / steps``. ``"linf"`` steps by
            ``alpha * sign(grad)``, ``"l2"`` by ``alpha * grad / ||grad||_2``.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy) or ``"cw"`` (margin), summed over the batch.
        random_start: start from a random point of the ball (else from ``x``).
        restarts: independent random starts; per example, a restart result that is
            misclassified is preferred, then the one with the highest loss.
            Restart 0 consumes the generator first, so it equals a single-restart run.
        early_stop: stop updating examples that are misclassified at the current
            point (only the others are forwarded when the model is in eval mode).
        eval_mode: attack ``model.eval()`` (the mode of every submodule is restored
            afterwards); ``False`` uses the model's current mode.
        generator: random source for the starts (default: the global RNG).

    Returns:
        ``x_adv``, detached, with the dtype, device and shape of ``x``.
    """
    eps = _check_number("eps", eps)
    steps = check_count("steps", steps)
    restarts = check_count("restarts", restarts)
    alpha = 2.5 * eps / steps if alpha is None else _check_number("alpha", alpha)
    tm, lf = threat_model(norm), loss_fn(loss)
    if restarts > 1 and not random_start:
        raise ConfigError("restarts > 1 needs random_start=True (restarts from x would all be identical)")
    x, y = x.detach(), y.detach()
    with preserved_mode(model, eval_mode), torch.enable_grad():
        runs = (_attack(model, x, y, eps, alpha, steps, tm, lf, random_start, early_stop, generator)
                for _ in range(restarts))
        best = next(runs)
        if restarts > 1:
            best_fooled, best_loss = _outcome(model, best, y, lf)
            for cand in runs:
                fooled, cand_loss = _outcome(model, cand, y, lf)
                better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (cand_loss > best_loss))
                best = torch.where(per_example(better, x), cand, best)
                best_fooled, best_loss = best_fooled | fooled, torch.where(better, cand_loss, best_loss)
    return best


def _attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    tm: ThreatModel,
    lf: LossFn,
    random_start: bool,
    early_stop: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One PGD run (a single restart) of the shared step loop (:func:`~fastrobust.attacks.kernel.ascend`);
    returns ``x_adv``. With ``early_stop`` and the model in eval mode only the running examples are
    forwarded (in train mode that would change batch-norm statistics: the batch is masked instead)."""
    delta = tm.random_delta(x, eps, generator) if random_start else torch.zeros_like(x)
    compact = early_stop and not any(m.training for m in model.modules())
    delta, _, _ = ascend(model, x, delta, steps, alpha, eps, tm, y, objective=summed_ce if lf is LOSSES["ce"]
                         else summed(lf), stop=EarlyStop(y) if early_stop else None, compact=compact)
    return (x + delta).clamp_(0, 1)


@torch.no_grad()
def _outcome(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, lf: LossFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: whether ``x_adv`` is misclassified, and its loss."""
    logits = model(x_adv)
    return logits.argmax(1) != y, lf(logits, y)


def _check_number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
