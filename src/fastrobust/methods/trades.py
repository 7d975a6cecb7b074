"""TRADES (Zhang et al. 2019) and M+TRADES."""

from __future__ import annotations

import torch

from ..attacks import preserved_mode, project_linf
from .base import FORWARD, Batch, Param, StepOutput, cross_entropy, kl_per_example, register_method
from .mplus import MPlus, mplus_params
from .pgd import PGDAT

BETA = Param("beta", float, 6.0, "weight of the KL robustness term (1/lambda in the paper)", minimum=0.0)
ATTACK_EVAL = Param("attack_eval", bool, True, "generate the attack with the model in eval mode (BatchNorm frozen), "
                    "as the reference does; false: in train mode")


def trades_attack(model, x: torch.Tensor, eps: float, alpha: float, steps: int, eval_mode: bool = True) -> torch.Tensor:
    """TRADES's inner maximisation: ``steps`` signed steps of size ``alpha`` on ``KL(f(x) || f(x+delta))``.

    The start is ``delta = 0.001 N(0,1)``, projected onto the eps-ball and [0,1]
    (the reference projects only after the first step, so its first forward may
    see pixels slightly outside [0,1]; here every input is a valid image). The target ``f(x)`` is one forward without gradient
    (1/3 pass per example), then each step is one pass. ``steps = 0`` returns
    the start. Returns ``x + delta``, detached.
    """
    x = x.detach()
    delta = project_linf(0.001 * torch.randn_like(x), x, eps)
    if steps:
        with preserved_mode(model, eval_mode), torch.enable_grad():
            with torch.no_grad():
                target = model(x)
            for _ in range(steps):
                delta.requires_grad_(True)
                (grad,) = torch.autograd.grad(kl_per_example(target, model(x + delta)).sum(), delta)
                delta = project_linf(delta.detach() + alpha * grad.sign(), x, eps)
    return x + delta


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``, both averaged over the batch (KL batchmean)."""
    return cross_entropy(logits_nat, y) + beta * kl_per_example(logits_nat, logits_adv).mean()


@register_method
class TRADES(PGDAT):
    name = "trades"
    description = ("TRADES (Zhang et al. 2019): K signed steps maximising KL(f(x) || f(x+delta)) from "
                   "delta = 0.001 N(0,1) (model in eval mode), then one weight step on "
                   "CE(f(x), y) + beta KL(f(x) || f(x_adv)). Cost K + 2 + 1/3 (the attack's clean target forward).")
    params = (
        Param("steps", int, 10, "K, the number of steps of the inner KL attack", minimum=1),
        BETA,
        ATTACK_EVAL,
    )

    def train_with(self, model, batch: Batch, step, steps: int, alpha: float,
                   input_grad: bool = False) -> tuple[StepOutput, torch.Tensor | None]:
        """The attack (``steps = 0``: x plus the small noise of its start), then the weight step on x and
        x_adv in train mode. Reports the adversarial logits (training accuracy on x_adv)."""
        x_adv = trades_attack(model, batch.x, batch.eps, alpha, steps, self.attack_eval).requires_grad_(input_grad)
        logits_nat = model(batch.x)
        logits_adv = model(x_adv)
        loss = trades_loss(logits_nat, logits_adv, batch.y, self.beta)
        grad = step(loss, wrt=x_adv if input_grad else None)
        passes = steps + 2 + (FORWARD if steps else 0.0)
        return StepOutput(loss.detach(), logits_adv.detach(), passes=len(batch.y) * passes), grad


@register_method
class MTRADES(MPlus, TRADES):
    name = "mtrades"
    description = ("M+TRADES: TRADES whose attack step count K follows DEAT's M+ rule on the epoch's input-gradient "
                   "magnitude (of the TRADES loss w.r.t. x_adv, free from the weight step), with step "
                   "alpha_K = max(eps/K, alpha); K = 0 uses x + 0.001 N(0,1) (the attack's start). "
                   "Cost K + 2 (+1/3 when K > 0).")
    params = (*mplus_params("K", 0, 10, minimum_start=0), BETA, ATTACK_EVAL)
    level_name = "K"
