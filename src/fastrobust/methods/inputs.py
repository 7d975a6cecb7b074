"""Training attacks: what makes the input a method trains on (docs/methods.md, "Attacks").

An attack is called with the model (in train mode), the minibatch, the level
its schedule set (K steps) and the step size, and returns ``(x_adv, passes,
grad)``: the detached training input, the example-passes it spent, and the
input gradient of its last step (for M+; ``None`` when it took no step). Every
attack works in the run's threat model (``ctx.threat``: L-inf or L2).
"""

from __future__ import annotations

import torch

from ..attacks import preserved_mode
from ..attacks.kernel import EarlyStop, ascend, compacts, summed_ce
from .base import FORWARD, Batch, Component, Param
from .losses import kl_per_example


def attack_eval_param(default: bool) -> Param:
    return Param("attack_eval", bool, default, "generate the attack with the model in eval mode (BatchNorm frozen)"
                 + ("" if default else " instead of train mode"))


class Clean(Component):
    """No attack: train on x (natural training)."""

    def __call__(self, model, batch: Batch, level: int, alpha: float):
        return batch.x, 0.0, None


STARTS = {
    "uniform": lambda tm, x, eps: tm.random_delta(x, eps),                       # uniform in the eps-ball (PGD)
    "zero": lambda tm, x, eps: torch.zeros_like(x),                              # from x itself (Amata)
    "normal": lambda tm, x, eps: tm.project(0.001 * torch.randn_like(x), x, eps),  # TRADES: 0.001 N(0, 1)
}


class Ascent(Component):
    """K signed (L2: normalised) ascent steps of size alpha, projected onto the eps-ball and [0, 1].

    ``objective``: ``ce`` (cross-entropy on y: PGD, MART) or ``kl`` (KL(f(x) || f(x+delta)): TRADES; the
    target f(x) is one forward, 1/3 pass). ``start``: a key of :data:`STARTS`. ``early_stop``: FAT's rule, an
    example stops at its (tau+1)-th misclassified iterate (tau steps after it is first misclassified, if it stays
    so). On an accelerator the whole batch is forwarded at every step and only the running examples are
    updated (a mask: static shapes, no host read; with BatchNorm in train mode the stopped examples still count
    in the batch statistics); on the CPU, in eval mode, only the running examples are forwarded (the same
    steps: see :func:`fastrobust.attacks.kernel.compacts`). Each step costs one pass per running example.
    K = 0 returns the start.
    The steps are :func:`fastrobust.attacks.kernel.ascend`'s, as evaluation PGD's.
    """

    def __init__(self, objective: str = "ce", start: str = "uniform", early_stop: bool = False,
                 attack_eval: bool = False, tau: int = 3) -> None:
        self.objective, self.start, self.early_stop = objective, start, early_stop
        self.defaults = {"attack_eval": attack_eval, "tau": tau}   # of its parameters (params)

    def params(self):
        tau = Param("tau", int, self.defaults["tau"], "FAT: steps an example still takes after it is first "
                    "misclassified (its attack stops at the next misclassified iterate after that)", minimum=0)
        return (attack_eval_param(self.defaults["attack_eval"]), *((tau,) if self.early_stop else ()))

    def reset(self):
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.input_std.device)   # steps taken, examples
        self.epoch_steps = None

    def __call__(self, model, batch: Batch, level: int, alpha: float):
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        delta = STARTS[self.start](tm, x, eps)
        if not level:
            return (x + delta).clamp_(0, 1), 0.0, None
        n, passes = len(x), 0.0
        stop = EarlyStop(y, self.v["tau"]) if self.early_stop else None
        with preserved_mode(model, self.v["attack_eval"]), torch.enable_grad():
            against, objective = y, summed_ce
            if self.objective == "kl":
                with torch.no_grad():
                    against, objective = model(x), _summed_kl
                passes += n * FORWARD
            delta, grad, spent = ascend(model, x, delta, level, alpha, eps, tm, against, objective=objective,
                                        stop=stop, keep_grad=True, compact=stop is not None and compacts(model, x))
        if stop is not None:   # FAT: the steps taken and the examples (on the device)
            self.sums[0] += stop.taken.sum()
            self.sums[1] += n
        return (x + delta).clamp_(0, 1), passes + spent, grad / n   # of the mean loss

    def end_epoch(self, epoch):
        if self.early_stop:
            total, seen = self.ctx.all_reduce_sum(self.sums).tolist()
            self.sums = torch.zeros_like(self.sums)
            self.epoch_steps = total / max(seen, 1.0)

    def state(self):
        """FAT: the epoch's mean number of attack steps taken per example."""
        return {"attack_steps": self.epoch_steps} if self.early_stop else {}


def _summed_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TRADES' attack objective: KL(f(x) || f(x + delta)) summed over the batch (``target``: f(x))."""
    return kl_per_example(target, logits).sum()


class NoiseFGSM(Component):
    """N-FGSM (de Jorge et al. 2022): a random start of ``noise`` x eps (uniform in that ball), one step of
    size alpha (default eps) from it, clipped to [0, 1] and NOT projected back to the eps-ball. 1 pass."""

    uses_level = False     # always one step: the collapse guard cannot strengthen it

    def __init__(self, noise: float = 2.0) -> None:
        self.noise = noise

    def params(self):
        return (Param("noise", float, self.noise, "radius of the random start, in units of eps (the paper's k = 2)",
                      minimum=0.0),)

    def __call__(self, model, batch: Batch, level: int, alpha: float):
        x, tm = batch.x.detach(), self.ctx.threat
        delta = (x + tm.start(x, self.v["noise"] * batch.eps, None)).clamp_(0, 1) - x
        # the step is not projected onto a ball around x: the loop runs on the point itself (from 0 + point)
        with torch.enable_grad():
            point, grad, passes = ascend(model, torch.zeros_like(x), x + delta, 1, alpha, batch.eps, tm, batch.y,
                                         step=_unprojected(tm), keep_grad=True)
        return point.clamp_(0, 1), passes, grad / len(x)


def _unprojected(tm):
    """N-FGSM's step: ``alpha`` along the threat model's ascent direction, not projected back to the eps-ball
    (the pixel box is applied at the end)."""
    return lambda delta, grad, alpha, x, eps: delta + alpha * tm.direction(grad)
