"""PGD-K adversarial training (Madry et al. 2018) and its variants: FAT (early-stopped PGD),
Amata (annealed step count) and M+PGD (step count by the M+ rule)."""

from __future__ import annotations

import math

import torch

from ..attacks import attack_loss, pgd, preserved_mode, project_linf, random_start
from ..config import recipe_step
from ..errors import ConfigError
from .base import Batch, Method, Param, StepOutput, cross_entropy, register_method
from .mplus import GrowingLevel, MPlus, mplus_params

ATTACK_EVAL = Param("attack_eval", bool, False, "generate the attack with the model in eval mode (BatchNorm frozen) "
                    "instead of train mode")


@register_method
class PGDAT(Method):
    name = "pgd"
    description = "PGD-K adversarial training (Madry et al. 2018): K attack steps from a random start, then one weight step. Cost K+1."
    params = (
        Param("steps", int, 10, "K, the number of PGD steps of the inner attack", minimum=1),
        ATTACK_EVAL,
    )
    uniform_start = True     # the attack's start: uniform in the eps-ball, else x itself

    @classmethod
    def max_steps(cls, params: dict) -> int:
        """The largest number of attack steps the method takes (sets the default alpha)."""
        return params["steps"]

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        return recipe_step(eps, cls.max_steps(params), recipe_ratio)

    @classmethod
    def check_config(cls, eps, alpha, params):
        if alpha > eps:
            raise ConfigError(f"method {cls.name}: alpha ({alpha:.4g}) must not exceed eps ({eps:.4g}); a usual choice is eps/4 (CIFAR 2/255 at 8/255)")

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        return self.train_with(model, batch, step, self.steps, batch.alpha)[0]

    def train_with(self, model, batch: Batch, step, steps: int, alpha: float,
                   input_grad: bool = False) -> tuple[StepOutput, torch.Tensor | None]:
        """``steps`` PGD steps of size ``alpha`` (none: train on x), then the weight step. Cost steps+1.

        With ``input_grad`` also returns the gradient of the training loss w.r.t. the adversarial input.
        """
        x_adv = batch.x
        if steps:
            x_adv = pgd(model, batch.x, batch.y, batch.eps, steps=steps, alpha=alpha,
                        random_start=self.uniform_start, eval_mode=self.attack_eval)
        x_adv = x_adv.detach().requires_grad_(input_grad)
        logits = model(x_adv)
        loss = cross_entropy(logits, batch.y)
        grad = step(loss, wrt=x_adv if input_grad else None)
        return StepOutput(loss.detach(), logits.detach(), passes=float(len(batch.y) * (steps + 1))), grad


def friendly_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                 tau: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """FAT's early-stopped PGD on CE, in eval mode, from a uniform random start.

    At each of up to ``steps`` iterations the examples still running are
    forwarded and backwarded together (one pass each). An example that is
    misclassified there with no budget left stops (its iterate is kept, its
    gradient unused); otherwise it takes a signed step of size ``alpha``, and a
    misclassified one spends one unit of its budget ``tau``. So an example
    stops at its (tau+1)-th misclassified iterate: tau steps after it is first
    misclassified, if it stays misclassified (the reference's counting). Only
    the running examples are forwarded (sub-batches; BatchNorm is frozen in
    eval mode, so this changes nothing for the others).

    Returns ``x_adv``, the passes spent, and the steps each example took.
    """
    x, y = x.detach(), y.detach()
    n = len(x)
    delta = random_start(x, eps)
    budget = torch.full((n,), tau, device=x.device)
    taken = torch.zeros(n, device=x.device)
    rows = torch.arange(n, device=x.device)
    passes = 0.0
    with preserved_mode(model, eval_mode=True), torch.enable_grad():
        for _ in range(steps):
            ds = delta[rows].requires_grad_(True)
            logits = model(x[rows] + ds)
            (grad,) = torch.autograd.grad(attack_loss(logits, y[rows], "ce").sum(), ds)
            passes += len(rows)
            wrong = logits.argmax(1) != y[rows]
            go = ~wrong | (budget[rows] > 0)
            budget[rows] -= wrong.long()
            rows, ds, grad = rows[go], ds.detach()[go], grad[go]
            if not len(rows):
                break
            delta[rows] = project_linf(ds + alpha * grad.sign(), x[rows], eps)
            taken[rows] += 1
    return x + delta, passes, taken


@register_method
class FAT(PGDAT):
    name = "fat"
    description = ("FAT, friendly adversarial training (Zhang et al. 2020): PGD-K in eval mode that stops, per "
                   "example, tau steps after the example is first misclassified; only running examples are "
                   "forwarded. Cost (attack passes actually spent) + 1 <= K+1.")
    params = (
        Param("steps", int, 10, "K, the most PGD steps of the inner attack", minimum=1),
        Param("tau", int, 3, "steps an example still takes after it is first misclassified", minimum=0),
    )

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.sums = torch.zeros(2, dtype=torch.float64, device=ctx.input_std.device)   # steps taken, examples
        self.epoch_steps: float | None = None

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x_adv, passes, taken = friendly_pgd(model, batch.x, batch.y, batch.eps, batch.alpha, self.steps, self.tau)
        logits = model(x_adv)
        loss = cross_entropy(logits, batch.y)
        step(loss)
        self.sums[0] += taken.sum()
        self.sums[1] += len(batch.y)
        return StepOutput(loss.detach(), logits.detach(), passes=passes + len(batch.y))

    def on_epoch_end(self, epoch: int) -> None:
        total, seen = self.ctx.all_reduce_sum(self.sums).tolist()
        self.sums = torch.zeros_like(self.sums)
        self.epoch_steps = total / max(seen, 1.0)

    def state(self) -> dict:
        """The epoch's mean number of attack steps taken per example."""
        return {"attack_steps": self.epoch_steps}


@register_method
class Amata(GrowingLevel, PGDAT):
    name = "amata"
    description = ("Amata (Ye et al. 2021): PGD-AT whose step count grows linearly from K_min in the first epoch to "
                   "K_max in the last, K_t = round(K_min + (K_max-K_min) t/(epochs-1)), with step "
                   "alpha_K = max(step_scale eps/K, alpha), from x (zero start, as the reference). Cost K_t+1.")
    params = (
        Param("k_min", int, 2, "K in the first epoch", minimum=1),
        Param("k_max", int, 10, "K in the last epoch", minimum=1),
        Param("step_scale", float, 2.5, "attack step at K steps: step_scale x eps / K (or alpha if larger); "
              "the reference's 20/255 at eps 8/255 is 2.5", minimum=0.0),
        ATTACK_EVAL,
    )
    level_name = "K"
    uniform_start = False

    @classmethod
    def max_steps(cls, params: dict) -> int:
        return params["k_max"]

    @classmethod
    def check_config(cls, eps, alpha, params):
        super().check_config(eps, alpha, params)
        if params["k_min"] > params["k_max"]:
            raise ConfigError(f"method amata: k_min ({params['k_min']}) must not exceed k_max ({params['k_max']})")

    def steps_at(self, epoch: int) -> int:
        """K_t, rounded half up; the fraction t/(epochs-1) is 0 with a single epoch and at most 1."""
        frac = min(epoch / max(self.ctx.epochs - 1, 1), 1.0)
        return math.floor(self.k_min + (self.k_max - self.k_min) * frac + 0.5)

    def first_level(self) -> int:
        return self.steps_at(0)

    def grow(self, epoch: int) -> int:
        return self.steps_at(epoch + 1)

    def step_size(self, batch: Batch, level: int) -> float:
        return max(self.step_scale * batch.eps / level, batch.alpha)


@register_method
class MPGD(MPlus, PGDAT):
    name = "mpgd"
    description = ("M+PGD: PGD-AT whose step count K follows DEAT's M+ rule on the epoch's input-gradient magnitude "
                   "(of the training loss w.r.t. the adversarial input, free from the weight step), with step "
                   "alpha_K = max(eps/K, alpha); K = 0 trains on the clean x. Cost K+1 per example in each epoch.")
    params = (*mplus_params("K", 0, 7, minimum_start=0), ATTACK_EVAL)
    level_name = "K"
