"""The M+ rule of DEAT (METHODS.md section 2) and the machinery of methods whose attack grows.

The gradient magnitude of epoch t is

    MG_t = sum over the epoch's minibatches of sum |sigma (.) grad_x L|,

where ``grad_x L`` is the input gradient of the minibatch's final training loss
(DEAT: the last replay's; M+PGD/TRADES/MART: the weight step's loss w.r.t. the
adversarial input), ``sigma`` the per-channel std of the model's input
normalisation (``ctx.input_std``), so ``sigma * grad_x L`` is the gradient
w.r.t. the normalised input, and ``L`` the minibatch MEAN loss. Each
minibatch's term is therefore about independent of the batch size (B examples,
each gradient scaled by 1/B), and MG_t grows linearly with the number of
minibatches per epoch. Over several processes every process sums its own
minibatches and the epoch's MG is their sum (``ctx.all_reduce_sum``), taken
before the rule, so every process takes the same decision. The rule only
compares MG_t with gamma times an earlier MG of the same run, so any constant
scale (epoch length, world size) cancels out.

The training pass already computes this gradient, so MG costs no extra pass.
A minibatch whose gradient is not finite (an fp16 overflow, whose weight step
the gradient scaler skips) adds nothing.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import ConfigError
from .base import Batch, Param, StepOutput


class MPlusRule:
    """M+: how the attack level (replays r or steps K) grows with the gradient magnitude.

    The level starts at ``start``. After epoch 0 it rises by one unconditionally;
    after epoch 1 the threshold becomes ``gamma * MG_1``; after each later epoch
    t, if ``MG_t > threshold`` and the level is below ``maximum``, the threshold
    becomes ``gamma * MG_t`` and the level rises by one (the threshold only moves
    when the level moves). The level never exceeds ``maximum``.
    """

    def __init__(self, start: int, maximum: int, gamma: float) -> None:
        self.maximum, self.gamma = maximum, gamma
        self.level = min(start, maximum)
        self.threshold: float | None = None

    def update(self, epoch: int, mg: float) -> int:
        """Apply the rule after epoch ``epoch`` (0-based) whose gradient magnitude was ``mg``; returns the new level."""
        if epoch == 0:
            self.level = min(self.level + 1, self.maximum)
        elif epoch == 1:
            self.threshold = self.gamma * mg
        elif mg > self.threshold and self.level < self.maximum:
            self.threshold = self.gamma * mg
            self.level += 1
        return self.level

    def state_dict(self) -> dict:
        return {"level": self.level, "threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.threshold = state["level"], state["threshold"]


def grad_magnitude(grad: torch.Tensor, input_std: torch.Tensor) -> torch.Tensor:
    """``sum |sigma (.) grad|`` (float64 scalar): the L1 norm of the gradient w.r.t. the normalised input.

    ``grad`` is ``(B, C, ...)``, ``input_std`` the ``(C,)`` normalisation std.
    """
    sigma = input_std.to(device=grad.device, dtype=grad.dtype).view(1, -1, *[1] * (grad.dim() - 2))
    return (grad * sigma).abs().sum(dtype=torch.float64)


class GrowingLevel:
    """Mixin (before a :class:`Method` subclass) for methods whose attack level grows at epoch ends.

    The level is DEAT's replay count r or an attack's step count K. The class it
    is mixed into provides ``train_with(model, batch, step, level, alpha,
    input_grad) -> (StepOutput, input gradient or None)``, which trains one
    minibatch at that level. Subclasses give ``first_level``, ``grow`` (the level
    after an epoch) and optionally ``observe`` (each minibatch's result) and
    ``step_size`` (the attack step at a level). ``state()`` reports the level used
    DURING the epoch just finished; ``state_dict`` saves the level to come.
    """

    level_name: ClassVar[str]              # how the level is reported and its parameters named: "r" or "K"
    needs_input_grad: ClassVar[bool] = False

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.level = self.epoch_level = self.first_level()

    def first_level(self) -> int:
        raise NotImplementedError

    def grow(self, epoch: int) -> int:
        """The level for epoch ``epoch + 1``, decided after epoch ``epoch`` on every process."""
        raise NotImplementedError

    def observe(self, batch: Batch, out: StepOutput, grad: torch.Tensor | None) -> None:
        """See one minibatch's result (and input gradient, if ``needs_input_grad``)."""

    def step_size(self, batch: Batch, level: int) -> float:
        return batch.alpha

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        out, grad = self.train_with(model, batch, step, self.level, self.step_size(batch, self.level),
                                    input_grad=self.needs_input_grad)
        self.observe(batch, out, grad)
        return out

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch_level, self.level = self.level, self.grow(epoch)

    def state(self) -> dict:
        return {self.level_name: self.epoch_level}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "level": self.level}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.level = state["level"]


def mplus_params(level: str, start: int, maximum: int, minimum_start: int) -> tuple[Param, ...]:
    """The M+ parameters of a method whose level is called ``level``: ``r_start, r_max`` or ``k_start, k_max``,
    and ``gamma``."""
    n = level.lower()
    return (
        Param(f"{n}_start", int, start, f"M+: {level} during the first epoch", minimum=minimum_start),
        Param(f"{n}_max", int, maximum, f"M+: the largest {level}", minimum=max(minimum_start, 1)),
        Param("gamma", float, 1.01, f"M+: raise {level} when the epoch's input-gradient magnitude exceeds the "
              "threshold, gamma x its value after the second epoch or at the last raise", minimum=0.0),
    )


class MPlus(GrowingLevel):
    """Mixin: the attack level follows :class:`MPlusRule` on the gradient magnitude (see the module docstring).

    Parameters come from :func:`mplus_params`; at level L > 0 the attack step is
    ``alpha_L = max(eps / L, alpha)``.
    """

    needs_input_grad = True

    def __init__(self, ctx, **params) -> None:
        n = self.level_name.lower()
        self.rule = MPlusRule(params[f"{n}_start"], params[f"{n}_max"], params["gamma"])
        self.mg_sum = torch.zeros((), dtype=torch.float64, device=ctx.input_std.device)
        self.epoch_mg: float | None = None
        super().__init__(ctx, **params)

    @classmethod
    def max_steps(cls, params: dict) -> int:
        return params[f"{cls.level_name.lower()}_max"]

    @classmethod
    def check_config(cls, eps, alpha, params):
        super().check_config(eps, alpha, params)
        n = cls.level_name.lower()
        if params[f"{n}_start"] > params[f"{n}_max"]:
            raise ConfigError(f"method {cls.name}: {n}_start ({params[f'{n}_start']}) must not exceed "
                              f"{n}_max ({params[f'{n}_max']})")

    def first_level(self) -> int:
        return self.rule.level

    def step_size(self, batch: Batch, level: int) -> float:
        return max(batch.eps / level, batch.alpha) if level else batch.alpha

    def observe(self, batch, out, grad) -> None:
        mg = grad_magnitude(grad, self.ctx.input_std)
        self.mg_sum += torch.where(mg.isfinite(), mg, 0.0)   # an fp16 overflow (step skipped by the scaler) adds 0

    def grow(self, epoch: int) -> int:
        self.epoch_mg = float(self.ctx.all_reduce_sum(self.mg_sum).item())
        self.mg_sum = torch.zeros_like(self.mg_sum)
        return self.rule.update(epoch, self.epoch_mg)

    def state(self) -> dict:
        """The level used during the epoch, the epoch's MG and the threshold after this epoch's decision."""
        return {**super().state(), "grad_magnitude": self.epoch_mg, "threshold": self.rule.threshold}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mplus": self.rule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rule.load_state_dict(state["mplus"])
