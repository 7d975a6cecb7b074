"""MART, misclassification-aware adversarial training (Wang et al. 2020), and M+MART."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..attacks import pgd
from .base import Batch, Param, StepOutput, cross_entropy, kl_per_example, register_method
from .mplus import MPlus, mplus_params
from .pgd import PGDAT
from .trades import ATTACK_EVAL, BETA


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
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
    return cross_entropy(adv, y) - log_rest.mean() + beta * robust.mean()


@register_method
class MART(PGDAT):
    name = "mart"
    description = ("MART (Wang et al. 2020): PGD-K on CE (uniform random start, model in eval mode), then one weight "
                   "step on the boosted CE of x_adv + beta KL(p(x) || p(x_adv)) (1 - p_y(x)). Cost K+2 (the "
                   "weight step forwards both x and x_adv).")
    params = (
        Param("steps", int, 10, "K, the number of PGD steps of the inner attack", minimum=1),
        BETA,
        ATTACK_EVAL,
    )

    def train_with(self, model, batch: Batch, step, steps: int, alpha: float,
                   input_grad: bool = False) -> tuple[StepOutput, torch.Tensor | None]:
        """``steps`` PGD steps, then the weight step in train mode; ``steps = 0``: x_adv = x, forwarded once
        (the KL term is then 0), cost 1. Reports the adversarial logits."""
        x_adv = batch.x
        if steps:
            x_adv = pgd(model, batch.x, batch.y, batch.eps, steps=steps, alpha=alpha, eval_mode=self.attack_eval)
        x_adv = x_adv.detach().requires_grad_(input_grad)
        if steps:
            logits_nat, logits_adv = model(batch.x), model(x_adv)
        else:
            logits_nat = logits_adv = model(x_adv)
        loss = mart_loss(logits_nat, logits_adv, batch.y, self.beta)
        grad = step(loss, wrt=x_adv if input_grad else None)
        passes = steps + 1 + (1 if steps else 0)
        return StepOutput(loss.detach(), logits_adv.detach(), passes=float(len(batch.y) * passes)), grad


@register_method
class MMART(MPlus, MART):
    name = "mmart"
    description = ("M+MART: MART whose attack step count K follows DEAT's M+ rule on the epoch's input-gradient "
                   "magnitude (of the MART loss w.r.t. x_adv, free from the weight step), with step "
                   "alpha_K = max(eps/K, alpha); K = 0 trains on x alone. Cost K + 2 (1 when K = 0).")
    params = (*mplus_params("K", 0, 10, minimum_start=0), BETA, ATTACK_EVAL)
    level_name = "K"
