"""Methods by composition: a training method = an attack x a loss x a strength schedule.

:func:`define` registers a named method from its three parts (``inputs.py``,
``losses.py``, ``strength.py`` / ``mplus.py``); ``catalog.py`` holds every
registration. The parts' parameters become the method's (``--name`` flags and
YAML keys), each with the registration's default. The engine sees a
:class:`Method` like any other, and the pass accounting is the parts' own:
attack passes + the loss's passes per example.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import torch

from ..attacks.kernel import ascend
from ..config import recipe_step
from ..errors import ConfigError
from .base import Batch, Component, Method, Param, StepOutput
from .losses import CE, cross_entropy
from .registry import register_method
from .strength import Schedule


class Composed(Method):
    """attack -> loss -> one weight step; the schedule sets the attack's level and step, and sees the
    attack's last input gradient (M+)."""

    attack: ClassVar[Component]
    loss: ClassVar[Component]
    schedule: ClassVar[Schedule]
    alpha_rule: ClassVar[str | float] = "recipe"   # default alpha: the recipe step for the schedule's largest K,
    #                                                or this factor times eps

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.parts = {key: getattr(type(self), key).bind(ctx, params) for key in ("attack", "loss", "schedule")}
        self.attack_, self.loss_, self.schedule_ = self.parts.values()
        self.boost = 0        # the collapse guard's strengthenings (see strengthen)
        self.min_level = 1    # the guard's floor for the first strengthened level

    def level_and_step(self, batch: Batch) -> tuple[int, float]:
        """The attack's level in force and its step: the schedule's; after the guard's strengthenings, twice the
        steps (or replays) per strengthening, the first time to at least ``min_level``, with the same reach in
        smaller steps: the step is at most the schedule's / 2 per strengthening, also when the schedule later
        raises its level."""
        base = self.schedule_.level
        step = self.schedule_.step_size(batch, base)
        if not (self.boost and base):
            return base, step
        level = max(base, self.min_level // 2) * 2 ** self.boost
        return level, step * base / level

    def strengthen(self, min_level: int = 1) -> str | None:
        base = self.schedule_.level
        if (not base and not self.schedule_.grows) or not self.attack_.uses_level:
            return None               # no attack (natural training), or one whose strength is not a level
        self.boost += 1
        self.min_level = min_level
        what = "replays" if self.schedule_.level_name == "r" else "attack steps"
        return (f"{what} x{2 ** self.boost} (the first time to at least {min_level}) for the rest of the run, "
                f"the same reach in smaller steps")

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        if cls.alpha_rule == "recipe":
            return recipe_step(eps, max(cls.schedule.max_level(params), 1), recipe_ratio)
        return cls.alpha_rule * eps

    @classmethod
    def check_config(cls, eps, alpha, params):
        if cls.alpha_rule == "recipe" and alpha > eps:
            raise ConfigError(f"method {cls.name}: alpha ({alpha:.4g}) must not exceed eps ({eps:.4g}); a usual "
                              "choice is eps/4 (CIFAR 2/255 at 8/255)")
        try:
            for key in ("attack", "loss", "schedule"):
                getattr(cls, key).check(eps, alpha, params)
        except ConfigError as exc:
            raise ConfigError(f"method {cls.name}: {exc}") from None

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        level, alpha = self.level_and_step(batch)
        x_adv, passes, grad = self.attack_(model, batch, level, alpha)
        loss, logits, per_example = self.loss_(model, batch.x, x_adv, batch.y)
        step(loss)
        out = StepOutput(loss.detach(), logits.detach(), passes=passes + per_example * len(batch.y))
        self.schedule_.observe(batch, out, grad)
        return out

    def on_epoch_end(self, epoch: int) -> None:
        for part in self.parts.values():
            part.end_epoch(epoch)

    def state(self) -> dict:
        state = {k: v for part in self.parts.values() for k, v in part.state().items()}
        return {**state, "guard_boost": self.boost} if self.boost else state

    def state_dict(self) -> dict:
        return {**{key: part.state_dict() for key, part in self.parts.items()}, "boost": self.boost,
                "min_level": self.min_level}

    def load_state_dict(self, state: dict) -> None:
        if not set(self.parts) <= set(state):
            raise ConfigError(f"method {self.name}: the checkpoint's method state was written by another version of "
                              "fastrobust; finish the run with that version or start a new one")
        for key, part in self.parts.items():
            part.load_state_dict(state[key])
        self.boost = state.get("boost", 0)
        self.min_level = state.get("min_level", _MIN_LEVEL_BEFORE_SAVED)


#: the guard's floor for a strengthened level when a checkpoint did not save it yet (it was 4 then)
_MIN_LEVEL_BEFORE_SAVED = 4


class ReplayStart(Component):
    """Where a replay method's perturbation starts: a fresh random point of the eps-ball at each minibatch
    (``uniform``), or zero at first and then carried across minibatches and epochs (``carry``, Free-AT: row i
    continues from row i of the last minibatch; a larger batch is padded with zeros)."""

    def __init__(self, start: str = "uniform") -> None:
        self.start = start

    def params(self):
        return (Param("start", str, self.start, "delta at each minibatch: uniform = a fresh random start in the "
                      "eps-ball (DEAT's reference, and Free-m in DEAT's table); carry = zero at first, then "
                      "carried across minibatches and epochs (Shafahi et al.'s Free)", choices=("uniform", "carry")),)

    def reset(self):
        self.delta = None

    def __call__(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        tm = self.ctx.threat
        if self.v["start"] == "uniform":
            return tm.random_delta(x, eps)
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        if (self.delta.device, self.delta.dtype) != (x.device, x.dtype):   # a restored state, once
            self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        if len(self.delta) < len(x):
            self.delta = torch.cat([self.delta, self.delta.new_zeros((len(x) - len(self.delta), *x.shape[1:]))])
        return tm.project(self.delta[:len(x)].clone(), x, eps)   # feasible for this x and the current eps

    def keep(self, delta: torch.Tensor) -> None:
        if self.v["start"] == "carry":
            self.delta[:len(delta)] = delta.detach()

    def state_dict(self):
        return {"delta": None if self.delta is None else self.delta.detach().cpu()}

    def load_state_dict(self, state):
        self.delta = state["delta"]


def replay_minibatch(self: Composed, model, batch: Batch, step) -> StepOutput:
    """Free-AT-style replay, the minibatch step of Free and DEAT (``define(..., minibatch=replay_minibatch)``):
    the minibatch is trained r times (r = the schedule's level); each replay is ONE forward/backward giving the
    weight step and the input gradient, then delta steps by alpha. Cost r.

    A minibatch step of its own because the weight steps happen inside the attack loop: replays cannot be
    written as an attack followed by a loss. With r = 1 the delta step comes after the only weight step, so
    the weights see the start point only."""
    x, y, eps, tm = batch.x, batch.y, batch.eps, self.ctx.threat
    r, alpha = self.level_and_step(batch)
    last = {}

    def weight_step(k, x, delta, y):   # the replay's one forward/backward: the weight step and the input gradient
        x_adv = (x + delta).detach().requires_grad_(True)
        last["logits"] = logits = model(x_adv)
        last["loss"] = loss = cross_entropy(logits, y, self.ctx.label_smoothing)
        return step(loss, wrt=x_adv), logits

    # the delta steps are the shared attack loop's; keep the last replay's gradient for the schedule (M+)
    delta, grad, passes = ascend(model, x, self.attack_(x, eps), r, alpha, eps, tm, y, gradient=weight_step,
                                 keep_grad=True)
    self.attack_.keep(delta)
    out = StepOutput(last["loss"].detach(), last["logits"].detach(), passes=passes)
    self.schedule_.observe(batch, out, grad)
    return out


def define(name: str, description: str, *, attack: Component, schedule: Schedule, loss: Component = CE(),
           alpha: str | float = "recipe", defaults: dict | None = None, selects_by: str = "robust",
           minibatch=None) -> type[Method]:
    """Register method ``name`` composed of ``attack``, ``loss`` and ``schedule``.

    ``alpha``: the default attack step, ``"recipe"`` (the data set's recipe step for the schedule's largest K,
    and alpha <= eps is enforced) or a factor of eps. ``defaults`` overrides the parts' parameter defaults.
    ``minibatch``: a minibatch step other than attack -> loss -> weight step (:func:`replay_minibatch`).
    """
    params: dict[str, Param] = {}
    for part in (schedule, attack, loss):
        for p in part.params():
            if p.name in params:
                raise ValueError(f"method {name}: two parts both define the parameter {p.name!r}")
            params[p.name] = p
    for key, value in (defaults or {}).items():
        params[key] = dataclasses.replace(params[key], default=value)
    cls_name = re.sub(r"\W", "", name.title()) + "Method"
    attrs = dict(name=name, description=description, params=tuple(params.values()), attack=attack, loss=loss,
                 schedule=schedule, alpha_rule=alpha, selects_by=selects_by, __module__=__name__)
    if minibatch is not None:
        attrs["train_batch"] = minibatch
    cls = type(cls_name, (Composed,), attrs)
    return register_method(cls)
