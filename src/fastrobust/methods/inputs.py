"""Training attacks: what makes the input a method trains on (docs/methods.md, "Attacks").

An attack is called with the model (in train mode), the minibatch, the level
its schedule set (K steps) and the step size, and returns ``(x_adv, passes,
grad)``: the detached training input, the example-passes it spent, and the
input gradient of its last step (for M+; ``None`` when it took no step). Every
attack works in the run's threat model (``ctx.threat``: L-inf or L2).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..attacks import preserved_mode
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
    so); only running examples are forwarded (sub-batches: with BatchNorm in train mode these use their own
    statistics). Each step is one pass per example forwarded. K = 0 returns the start.
    """

    def __init__(self, objective: str = "ce", start: str = "uniform", early_stop: bool = False,
                 attack_eval: bool = False, tau: int = 3) -> None:
        self.objective, self.start, self.early_stop = objective, start, early_stop
        self.defaults = (attack_eval, tau)

    def params(self):
        tau = Param("tau", int, self.defaults[1], "FAT: steps an example still takes after it is first "
                    "misclassified (its attack stops at the next misclassified iterate after that)", minimum=0)
        return (attack_eval_param(self.defaults[0]), *((tau,) if self.early_stop else ()))

    def reset(self):
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.input_std.device)   # steps taken, examples
        self.epoch_steps = None

    def __call__(self, model, batch: Batch, level: int, alpha: float):
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        delta = STARTS[self.start](tm, x, eps)
        if not level:
            return (x + delta).clamp_(0, 1), 0.0, None
        n, passes, grad = len(x), 0.0, None
        rows = slice(None)
        if self.early_stop:   # FAT's bookkeeping: the running rows, their budgets, the steps each took
            rows = torch.arange(n, device=x.device)
            budget = torch.full((n,), self.v["tau"], device=x.device)
            taken = torch.zeros(n, device=x.device)
        with preserved_mode(model, self.v["attack_eval"]), torch.enable_grad():
            target = None
            if self.objective == "kl":
                with torch.no_grad():
                    target = model(x)
                passes += n * FORWARD
            for k in range(level):
                ds = delta[rows].requires_grad_(True)
                logits = model(x[rows] + ds)
                if self.objective == "kl":
                    objective = kl_per_example(target[rows], logits).sum()
                else:   # summed CE in one kernel
                    objective = F.cross_entropy(logits.float(), y[rows], reduction="sum")
                (grad,) = torch.autograd.grad(objective, ds)
                passes += len(ds)
                ds = ds.detach()
                step_grad = grad.clone() if k == level - 1 else grad   # keep the last one (the step signs in place)
                if self.early_stop:
                    wrong = logits.argmax(1) != y[rows]
                    go = ~wrong | (budget[rows] > 0)
                    budget[rows] -= wrong.long()
                    rows, ds, grad, step_grad = rows[go], ds[go], grad[go], step_grad[go]
                    if not len(rows):
                        break
                    delta[rows] = tm.step(ds, step_grad, alpha, x[rows], eps)
                    taken[rows] += 1
                else:
                    delta = tm.step(ds, step_grad, alpha, x, eps)
        if self.early_stop:
            self.sums += torch.stack([taken.sum().double(), torch.tensor(float(n), dtype=torch.float64,
                                                                              device=taken.device)])
        return (x + delta).clamp_(0, 1), passes, None if grad is None else grad / n   # of the mean loss

    def end_epoch(self, epoch):
        if self.early_stop:
            total, seen = self.ctx.all_reduce_sum(self.sums).tolist()
            self.sums = torch.zeros_like(self.sums)
            self.epoch_steps = total / max(seen, 1.0)

    def state(self):
        """FAT: the epoch's mean number of attack steps taken per example."""
        return {"attack_steps": self.epoch_steps} if self.early_stop else {}


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
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x + delta).float(), batch.y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
        x_adv = (x + delta.detach() + alpha * tm.direction(grad)).clamp_(0, 1)
        return x_adv, float(len(x)), grad / len(x)
