"""Training losses: what the weight step minimises on the attack's input (docs/methods.md, "Losses").

A loss is called with the model (train mode), the clean x, the attack's x_adv
and y, and returns ``(loss, logits, passes)``: the scalar loss to backpropagate,
the logits of x_adv (training accuracy) and the example-passes it costs per
example (each forwarded input is one forward and one backward).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Component, Param


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy computed in float32 (safe under autocast), against labels smoothed by ``smoothing``
    (the run's --label-smoothing for a training loss; attacks use the hard labels)."""
    return nn.functional.cross_entropy(logits.float(), y, label_smoothing=smoothing)


def kl_per_example(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per example, in float32 from log-probabilities."""
    log_p = nn.functional.log_softmax(logits_p.float(), dim=1)
    log_q = nn.functional.log_softmax(logits_q.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def beta_param(default: float = 6.0) -> Param:
    return Param("beta", float, default, "weight of the KL robustness term (1/lambda in the TRADES paper)", minimum=0.0)


class CE(Component):
    """Cross-entropy on x_adv (Madry et al. 2018). 1 pass."""

    def __call__(self, model, x, x_adv, y):
        logits = model(x_adv)
        return cross_entropy(logits, y, self.ctx.label_smoothing), logits, 1.0


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
                smoothing: float = 0.0) -> torch.Tensor:
    """``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``, both averaged over the batch (KL batchmean)."""
    return cross_entropy(logits_nat, y, smoothing) + beta * kl_per_example(logits_nat, logits_adv).mean()


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
              smoothing: float = 0.0) -> torch.Tensor:
    """MART's outer loss, averaged over the batch:

    ``BCE(p(x_adv), y) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x))`` with the boosted CE
    ``BCE = CE(p(x_adv), y) - log(1 - max_{j != y} p_j(x_adv))``.

    ``log(1 - p_j)`` is computed exactly as ``logsumexp_{k != j} z_k - logsumexp_k z_k``
    (the reference adds 1e-4 and 1e-12 inside its logarithms instead).
    """
    adv = logits_adv.float()
    true_class = F.one_hot(y, adv.shape[1]).bool()
    runner_up = F.one_hot(adv.masked_fill(true_class, float("-inf")).argmax(1), adv.shape[1]).bool()
    log_rest = adv.masked_fill(runner_up, float("-inf")).logsumexp(1) - adv.logsumexp(1)
    p_true = F.softmax(logits_nat.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    robust = kl_per_example(logits_nat, logits_adv) * (1 - p_true)
    return cross_entropy(adv, y, smoothing) - log_rest.mean() + beta * robust.mean()


class PairLoss(Component):
    """A loss of the clean and the adversarial logits with a KL weight ``beta``: x and x_adv are both
    forwarded in train mode (2 passes). :data:`TRADES` and :data:`MART` are its two instances."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def params(self):
        return (beta_param(),)

    def __call__(self, model, x, x_adv, y):
        logits_nat, logits_adv = model(x), model(x_adv)
        return self.fn(logits_nat, logits_adv, y, self.v["beta"], self.ctx.label_smoothing), logits_adv, 2.0


def TRADES() -> PairLoss:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta KL(f(x) || f(x_adv))."""
    return PairLoss(trades_loss)


def MART() -> PairLoss:
    """MART (Wang et al. 2020): boosted CE on x_adv + beta KL(p(x) || p(x_adv)) (1 - p_y(x))."""
    return PairLoss(mart_loss)
