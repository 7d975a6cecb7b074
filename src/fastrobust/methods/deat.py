"""DEAT, dynamic efficient adversarial training (METHODS.md section 2): Free-style batch
replay whose replay count r grows during training (DEAT-d, DEAT-p, M+DEAT)."""

from __future__ import annotations

import torch

from ..attacks import random_start
from .base import Batch, Method, Param, StepOutput, register_method
from .free import CarriedDelta, replay
from .mplus import GrowingLevel, MPlus, mplus_params

START = Param("start", str, "uniform", "delta at each minibatch: uniform = fresh U(-eps,eps) (reference, CIFAR); "
              "carry = zero at first, then carried across minibatches and epochs (as free)",
              choices=("uniform", "carry"))


class Replay(CarriedDelta, Method):
    """DEAT's minibatch step: r replays (:func:`free.replay`) from a fresh or carried delta. Cost r per example."""

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        return 1.25 * eps        # the reference's 10/255 at eps 8/255

    def train_with(self, model, batch: Batch, step, replays: int, alpha: float,
                   input_grad: bool = False) -> tuple[StepOutput, torch.Tensor]:
        """Train one minibatch with ``replays`` replays of step ``alpha``; returns the last replay's input gradient."""
        x, y = batch.x, batch.y
        delta = self.carried_delta(x, batch.eps) if self.start == "carry" else random_start(x, batch.eps)
        delta, loss, logits, grad = replay(model, x, y, delta, replays, alpha, batch.eps, step)
        if self.start == "carry":
            self.carry(delta)
        return StepOutput(loss, logits, passes=float(len(y) * replays)), grad


@register_method
class DEATd(GrowingLevel, Replay):
    name = "deat-d"
    level_name = "r"
    description = ("DEAT-d (dynamic efficient AT): Free-style replay of each minibatch r times, from a fresh "
                   "uniform delta (by default), with r_t = min(floor(t/d)+1, r_max) in epoch t. Cost r_t per example "
                   "in epoch t.")
    params = (
        Param("d", int, 3, "epochs between increases of the replay count r", minimum=1),
        Param("r_max", int, 5, "the largest replay count", minimum=1),
        START,
    )

    def first_level(self) -> int:
        return 1

    def grow(self, epoch: int) -> int:
        return min((epoch + 1) // self.d + 1, self.r_max)


@register_method
class DEATp(GrowingLevel, Replay):
    name = "deat-p"
    level_name = "r"
    description = ("DEAT-p: Free-style replay of each minibatch r times, from a fresh uniform delta (by default); "
                   "r starts at 1 and rises by one after each epoch whose training accuracy on the last replay's "
                   "perturbed inputs exceeds p, up to r_max. Cost r per example.")
    params = (
        Param("p", float, 0.4, "raise r after an epoch whose last-replay training accuracy exceeds p "
              "(reference 0.4; CIFAR-100 0.2)", minimum=0.0),
        Param("r_max", int, 4, "the largest replay count", minimum=1),
        START,
    )

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.counts = torch.zeros(2, dtype=torch.float64, device=ctx.input_std.device)   # correct, seen
        self.epoch_acc: float | None = None

    def first_level(self) -> int:
        return 1

    def observe(self, batch, out, grad) -> None:
        self.counts[0] += (out.logits.argmax(1) == batch.y).sum()
        self.counts[1] += len(batch.y)

    def grow(self, epoch: int) -> int:
        correct, seen = self.ctx.all_reduce_sum(self.counts).tolist()
        self.counts = torch.zeros_like(self.counts)
        self.epoch_acc = correct / max(seen, 1.0)
        return self.level + 1 if self.epoch_acc > self.p and self.level < self.r_max else self.level

    def state(self) -> dict:
        return {**super().state(), "replay_acc": self.epoch_acc}


@register_method
class MDEAT(MPlus, Replay):
    name = "mdeat"
    level_name = "r"
    description = ("M+DEAT (DEAT's main method): Free-style replay of each minibatch r times from a fresh uniform "
                   "delta (by default); r grows by the M+ rule on the epoch's input-gradient magnitude (taken free "
                   "from the last replay), with step alpha_r = max(eps/r, alpha). Cost r per example in each epoch.")
    params = (*mplus_params("r", 1, 8, minimum_start=1), START)
