"""Strength schedules: how strong a method's attack is in each epoch (docs/methods.md, "Schedules").

The strength is a *level*: an attack's step count K or a replay count r. The level decided after epoch t is used in epoch
t+1; ``state()`` reports the level used DURING the epoch just finished, and
``state_dict`` the level to come, so that a resumed run continues exactly.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .base import Batch, Component, Param, StepOutput


class Schedule(Component):
    """Fixed strength: the level is the parameter ``param`` (e.g. PGD's ``steps``), or ``value`` when no
    parameter is exposed (FGSM-RS's single step)."""

    def __init__(self, param: Param | None = None, value: int | None = None, level: str = "K") -> None:
        self.param, self.value, self.level_name = param, value, level

    def params(self) -> tuple[Param, ...]:
        return (self.param,) if self.param else ()

    def reset(self) -> None:
        self.level = self.epoch_level = self.first_level()

    def first_level(self) -> int:
        return self.v[self.param.name] if self.param else self.value

    def max_level(self, values: dict) -> int:
        """The largest level the schedule can reach (it sets the default attack step)."""
        return values[self.param.name] if self.param else self.value

    def step_size(self, batch: Batch, level: int) -> float:
        return batch.alpha

    def observe(self, batch: Batch, out: StepOutput, grad: torch.Tensor | None) -> None:
        """See one minibatch's result and its last attack step's input gradient (None if there was none)."""

    def grow(self, epoch: int) -> int:
        """The level for epoch ``epoch + 1``, decided after epoch ``epoch`` on every process."""
        return self.level

    def end_epoch(self, epoch: int) -> None:
        self.epoch_level, self.level = self.level, self.grow(epoch)

    grows = False   # a schedule whose level changes reports it in each epoch's metrics

    def state(self) -> dict:
        return {self.level_name: self.epoch_level} if self.grows else {}

    def state_dict(self) -> dict:
        return {"level": self.level}

    def load_state_dict(self, state: dict) -> None:
        self.level = state["level"]


def level_param(name: str, default: int, help: str, minimum: int = 1) -> Param:
    return Param(name, int, default, help, minimum=minimum)


class Linear(Schedule):
    """Amata: K grows linearly from ``k_min`` (first epoch) to ``k_max`` (last), K_t = round(K_min + (K_max -
    K_min) t / (epochs - 1)), with step ``max(step_scale eps / K, alpha)``."""

    grows = True

    def __init__(self, k_min: int = 2, k_max: int = 10, step_scale: float = 2.5) -> None:
        super().__init__(level="K")
        self.defaults = {"k_min": k_min, "k_max": k_max, "step_scale": step_scale}

    def params(self):
        d = self.defaults
        return (level_param("k_min", d["k_min"], "K in the first epoch"),
                level_param("k_max", d["k_max"], "K in the last epoch"),
                Param("step_scale", float, d["step_scale"], "attack step at K steps: step_scale x eps / K (or alpha "
                      "if larger); the reference's 20/255 at eps 8/255 is 2.5", minimum=0.0))

    def steps_at(self, epoch: int) -> int:
        frac = min(epoch / max(self.ctx.epochs - 1, 1), 1.0)
        return math.floor(self.v["k_min"] + (self.v["k_max"] - self.v["k_min"]) * frac + 0.5)

    def first_level(self):
        return self.steps_at(0)

    def max_level(self, values):
        return values["k_max"]

    def check(self, eps, alpha, values):
        if values["k_min"] > values["k_max"]:
            raise ConfigError(f"k_min ({values['k_min']}) must not exceed k_max ({values['k_max']})")

    def step_size(self, batch, level):
        return max(self.v["step_scale"] * batch.eps / level, batch.alpha)

    def grow(self, epoch):
        return self.steps_at(epoch + 1)


class EveryD(Schedule):
    """DEAT-d: r_t = min(floor(t / d) + 1, r_max)."""

    grows = True

    def __init__(self, d: int = 3, r_max: int = 5) -> None:
        super().__init__(level="r")
        self.defaults = {"d": d, "r_max": r_max}

    def params(self):
        return (level_param("d", self.defaults["d"], "epochs between increases of the replay count r"),
                level_param("r_max", self.defaults["r_max"], "the largest replay count"))

    def first_level(self):
        return 1

    def max_level(self, values):
        return values["r_max"]

    def grow(self, epoch):
        return min((epoch + 1) // self.v["d"] + 1, self.v["r_max"])


class OnAccuracy(Schedule):
    """DEAT-p: r starts at 1 and rises by one after an epoch whose training accuracy on the last replay's
    inputs exceeds p, up to r_max."""

    grows = True

    def __init__(self, p: float = 0.4, r_max: int = 4) -> None:
        super().__init__(level="r")
        self.defaults = {"p": p, "r_max": r_max}

    def params(self):
        return (Param("p", float, self.defaults["p"], "raise r after an epoch whose last-replay training accuracy "
                      "exceeds p (reference 0.4; CIFAR-100 0.2)", minimum=0.0),
                level_param("r_max", self.defaults["r_max"], "the largest replay count"))

    def reset(self):
        super().reset()
        self.counts = torch.zeros(2, dtype=torch.float64, device=self.ctx.input_std.device)   # correct, seen
        self.epoch_acc = None

    def first_level(self):
        return 1

    def max_level(self, values):
        return values["r_max"]

    def observe(self, batch, out, grad):
        self.counts[0] += (out.logits.argmax(1) == batch.y).sum()
        self.counts[1] += len(batch.y)

    def grow(self, epoch):
        correct, seen = self.ctx.all_reduce_sum(self.counts).tolist()
        self.counts = torch.zeros_like(self.counts)
        self.epoch_acc = correct / max(seen, 1.0)
        return self.level + 1 if self.epoch_acc > self.v["p"] and self.level < self.v["r_max"] else self.level

    def state(self):
        return {**super().state(), "replay_acc": self.epoch_acc}
