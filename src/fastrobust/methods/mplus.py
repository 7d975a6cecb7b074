"""M+ acceleration, DEAT's rule for growing an attack (docs/methods.md, "M+").

The gradient magnitude of epoch t is

    MG_t = sum over the epoch's minibatches of sum |sigma (.) grad_x L|,

where ``grad_x L`` is the input gradient of the LAST attack step of the minibatch
(DEAT: the last replay's, which the weight step already computed; M+PGD, M+TRADES,
M+MART, M+GAAT: the attack's last step), ``sigma`` the per-channel std of the
model's input normalisation, so ``sigma * grad_x L`` is the gradient w.r.t. the
normalised input, and ``L`` the minibatch MEAN loss. MG therefore costs no pass.
The paper's code sums over every minibatch for M+DEAT and M+PGD, and keeps only
the epoch's last minibatch for M+TRADES and M+MART (``mg_batches="last"``). Over
several processes each sums its own minibatches and the epoch's MG is their sum,
so every process takes the same decision; the rule compares MG only with gamma
times an earlier MG of the same run, so any constant scale cancels out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Param
from .strength import Schedule, level_param


class MPlusRule:
    """The level (K or r) starts at ``start``. After the rule's epoch 0 it rises by one; after its epoch 1 the
    threshold becomes ``gamma * MG_1``; after each later epoch, if (``MG_t > threshold`` and level < ``maximum``)
    or, with ``floor``, the level's steps cannot yet cross the eps-ball (alpha * level < eps), the threshold
    becomes ``gamma * MG_t`` and the level rises by one. The threshold moves only when the level moves; the
    level never exceeds ``maximum``.

    The rule counts its own epochs (``epochs``, part of its state): a state restored from an earlier epoch
    (the collapse guard's restore) takes the rule back to that point, and its epochs 0 and 1 come again
    if the restored state was from before them."""

    def __init__(self, start: int, maximum: int, gamma: float, floor: bool = False) -> None:
        self.maximum, self.gamma, self.floor = maximum, gamma, floor
        self.level = min(start, maximum)
        self.threshold: float | None = None
        self.epochs = 0            # epochs the rule has seen

    def update(self, mg: float, reaches: bool = True) -> int:
        """Apply the rule after its next epoch, whose gradient magnitude was ``mg``; ``reaches``: whether the
        current level's steps can cross the ball."""
        epoch, self.epochs = self.epochs, self.epochs + 1
        if epoch == 0:
            self.level = min(self.level + 1, self.maximum)
        elif epoch == 1:
            self.threshold = self.gamma * mg
        elif self.level < self.maximum and (mg > self.threshold or (self.floor and not reaches)):
            self.threshold = self.gamma * mg
            self.level += 1
        return self.level

    def state_dict(self) -> dict:
        return {"level": self.level, "threshold": self.threshold, "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.threshold = state["level"], state["threshold"]
        # a checkpoint from before the count was kept: past epoch 1 once a threshold is set; before
        # that, its epoch 0 (an older checkpoint of the rule's epoch 0 would raise the level once more)
        self.epochs = state.get("epochs", 2 if self.threshold is not None else 0)


def grad_magnitude(grad: torch.Tensor, input_std: torch.Tensor) -> torch.Tensor:
    """``sum |sigma (.) grad|`` (float64 scalar): the L1 norm of the gradient w.r.t. the normalised input.

    ``grad`` is ``(B, C, ...)``, ``input_std`` the ``(C,)`` normalisation std.
    """
    if (input_std.device, input_std.dtype) != (grad.device, grad.dtype):
        input_std = input_std.to(device=grad.device, dtype=grad.dtype)
    sigma = input_std.view(1, -1, *[1] * (grad.dim() - 2))
    return (grad * sigma).abs().sum(dtype=torch.float64)


STEP_RULES = ("constant", "eps-over-k")


@dataclass(frozen=True)
class LevelParams:
    """The parameter names of the level an M+ schedule drives."""

    start: str      # the level during the first epoch
    maximum: str    # the largest level


#: the parameters of each level: K (attack steps) or r (replays)
LEVEL_PARAMS = {"K": LevelParams("k_start", "k_max"), "r": LevelParams("r_start", "r_max")}


class MPlus(Schedule):
    """The level follows :class:`MPlusRule` on MG. ``step_rule``: ``constant`` (the paper's code: step alpha
    in every epoch, with the reach floor when ``floor``) or ``eps-over-k`` (a later, never-run rewrite of the
    reference: step max(eps/K, alpha), which always reaches, so the floor never fires)."""

    grows = True

    def __init__(self, level: str, start: int, maximum: int, gamma: float = 1.01, floor: bool = True,
                 mg_batches: str = "all") -> None:
        super().__init__(level=level)
        self.names = LEVEL_PARAMS[level]
        self.defaults = {self.names.start: start, self.names.maximum: maximum, "gamma": gamma}
        self.floor, self.mg_batches = floor, mg_batches

    def params(self):
        names, d, lv = self.names, self.defaults, self.level_name
        floor = (" and, with the constant step, while alpha x " + lv + " < eps (the reach floor)") if self.floor else ""
        return (level_param(names.start, d[names.start], f"M+: {lv} during the first epoch",
                            minimum=0 if lv == "K" else 1),
                level_param(names.maximum, d[names.maximum], f"M+: the largest {lv}"),
                Param("gamma", float, d["gamma"], f"M+: raise {lv} when the epoch's input-gradient magnitude exceeds the "
                      f"threshold, gamma x its value after the second epoch or at the last raise{floor}", minimum=0.0),
                Param("step_rule", str, "constant", "M+: attack step per epoch: constant = alpha (the paper's code); "
                      f"eps-over-k = max(eps/{lv}, alpha) (a later rewrite, never run by the paper)",
                      choices=STEP_RULES, absent="eps-over-k"))

    def reset(self):
        self.rule = MPlusRule(self.v[self.names.start], self.v[self.names.maximum], self.v["gamma"], self.floor)
        self.mg_sum = torch.zeros((), dtype=torch.float64, device=self.ctx.input_std.device)
        self.epoch_mg = None
        super().reset()

    def first_level(self):
        return min(self.v[self.names.start], self.v[self.names.maximum])

    def max_level(self, values):
        return values[self.names.maximum]

    def check(self, eps, alpha, values):
        start, maximum = self.names.start, self.names.maximum
        if values[start] > values[maximum]:
            raise ConfigError(f"{start} ({values[start]}) must not exceed {maximum} ({values[maximum]})")
        if self.floor and values["step_rule"] == "constant" and alpha * values[maximum] < eps * (1 - 1e-9):
            flag = "--" + maximum.replace("_", "-")
            raise ConfigError(f"alpha x {maximum} = {alpha * values[maximum]:.4g} is below eps ({eps:.4g}): "
                              f"{values[maximum]} steps of size alpha cannot cross the eps-ball and the reach "
                              f"floor would pass {maximum}; raise {flag} or --alpha (or leave --alpha unset)")

    def _step(self, eps: float, alpha: float, level: int) -> float:
        return max(eps / level, alpha) if self.v["step_rule"] == "eps-over-k" and level else alpha

    def step_size(self, batch, level):
        return self._step(batch.eps, batch.alpha, level)

    def observe(self, batch, out, grad):
        if grad is None:           # level 0: no attack step, nothing to measure
            return
        mg = grad_magnitude(grad, self.ctx.input_std)
        mg = torch.where(mg.isfinite(), mg, 0.0)   # an fp16 overflow (step skipped by the scaler) adds 0
        if self.mg_batches == "last":
            self.mg_sum.copy_(mg)
        else:
            self.mg_sum += mg

    def grow(self, epoch):
        self.epoch_mg = float(self.ctx.all_reduce_sum(self.mg_sum).item())
        self.mg_sum = torch.zeros_like(self.mg_sum)
        if epoch < math.ceil(self.ctx.eps_warmup):   # epochs 0 and 1 of the rule: the first at full eps
            return self.rule.level
        eps, alpha, level = self.ctx.eps, self.ctx.alpha, self.rule.level
        return self.rule.update(self.epoch_mg, reaches=self._step(eps, alpha, level) * level >= eps * (1 - 1e-9))

    def state(self):
        """The level used during the epoch, the epoch's MG and the threshold after this epoch's decision."""
        return {**super().state(), "grad_magnitude": self.epoch_mg, "threshold": self.rule.threshold}

    def state_dict(self):
        return {**super().state_dict(), "mplus": self.rule.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rule.load_state_dict(state["mplus"])
