"""The one interface every training method implements (see docs/methods.md).

A method turns a minibatch into optimisation: the engine calls
:meth:`Method.train_batch` with the model (in train mode), the batch and a
``step`` function; the method computes its loss and calls ``step(loss)``
once (or, for replay methods such as Free-AT, once per replay). ``step``
does backward, gradient scaling, clipping and the optimizer update, and
returns the (unscaled) gradient of the loss with respect to ``wrt`` if one
is given, so a replay's input gradient comes from the same backward pass.
The method reports what it spent in example-passes (one forward+backward
of one example = 1; forward only 1/3; backward only 2/3). A method knows
nothing of checkpoints, logging, schedules or processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import nn

from ..attacks import THREAT_MODELS, ThreatModel
from ..errors import ConfigError

# Passes per example of each kind of work (docs/methods.md, "Cost"): forward+backward = 1.
FORWARD = 1.0 / 3.0
BACKWARD = 2.0 / 3.0


@dataclass(frozen=True)
class Param:
    """A method parameter, exposed as ``--name`` on the command line."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple | None = None
    #: how a run saved before this parameter existed behaved, where not as ``default`` (see ``then``)
    absent: Any = None

    @property
    def then(self) -> Any:
        """The value to assume for a saved run whose config lacks this parameter."""
        return self.default if self.absent is None else self.absent

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any, method: str) -> Any:
        where = f"method {method!r}, parameter {self.name}"
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif self.type is float:
                from ..config import parse_number

                value = parse_number(value, where)
            elif self.type is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
                raise ValueError
            else:
                value = self.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {self.type.__name__}, got {value!r}") from None
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


@dataclass
class Batch:
    """One minibatch with the attack budget in force for it (eps may ramp up)."""

    x: torch.Tensor      # [0,1] images
    y: torch.Tensor
    eps: float
    alpha: float
    #: the training-split row of each example (int64, on x's device), for methods that keep state per example
    #: across epochs (FGSM-PGI, FGSM-PCO); the engine's training loop always gives it, None where not known
    index: torch.Tensor | None = None


@dataclass
class StepOutput:
    """What a method reports for one minibatch."""

    loss: torch.Tensor     # detached scalar: the mean training loss of the (last) weight step
    logits: torch.Tensor   # logits of the inputs the weights were trained on, for training accuracy
    passes: float          # example-passes spent on this batch, summed over its examples


class StepFn(Protocol):
    def __call__(self, loss: torch.Tensor, wrt: torch.Tensor | None = None) -> torch.Tensor | None: ...


@dataclass
class MethodContext:
    """Facts about the run that a method may need; given by the engine."""

    num_classes: int
    input_std: torch.Tensor            # (C,) std of the model's input normalisation
    epochs: int
    batches_per_epoch: int
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t   # across processes (identity on one)
    threat: ThreatModel = THREAT_MODELS["linf"]   # the norm of every attack (random start, step, projection)
    eps: float = 0.0                   # the run's full radius and step (a batch's may be smaller during warm-up)
    alpha: float = 0.0
    eps_warmup: float = 0.0            # epochs of the eps ramp (see --eps-warmup)
    label_smoothing: float = 0.0       # of the training loss's cross-entropy terms (--label-smoothing); attacks: none
    examples: int = 0                  # rows of the training split (what Batch.index addresses); 0: not known


class Stateful:
    """What a method and each part of a composed method expose of their state."""

    def state(self) -> dict:
        """State to log with each epoch's metrics (e.g. ``r``, ``K``)."""
        return {}

    def state_dict(self) -> dict:
        """Everything needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave."""


class Method(Stateful):
    """Base class: subclasses set ``name``, ``description``, ``params`` and implement ``train_batch``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: which validation accuracy picks best.pt: "robust" (ties broken by clean) or "clean" (ties by robust)
    selects_by: ClassVar[str] = "robust"
    #: how many times the collapse guard has strengthened the attack (:meth:`strengthen`); part of ``state_dict``
    boost: int = 0

    def __init__(self, ctx: MethodContext, **params: Any) -> None:
        self.ctx = ctx
        for p in self.params:
            setattr(self, p.name, params[p.name])

    # ---- configuration ---------------------------------------------------
    @classmethod
    def resolve_params(cls, given: dict) -> dict:
        """Check the given parameters against ``params`` and fill defaults."""
        known = {p.name: p for p in cls.params}
        out = {}
        for key, value in (given or {}).items():
            norm = key.replace("-", "_")
            if norm not in known:
                allowed = ", ".join(p.flag for p in cls.params) or "none"
                raise ConfigError(f"{key!r} is not a parameter of method {cls.name!r} (its parameters: {allowed})")
            out[norm] = known[norm].convert(value, cls.name)
        for p in cls.params:
            out.setdefault(p.name, p.default)
        return out

    @classmethod
    def saved_params(cls, saved: dict) -> dict:
        """A saved run's parameters, completed with how the run behaved for those newer than it."""
        return {**{p.name: p.then for p in cls.params}, **saved}

    @classmethod
    def default_alpha(cls, eps: float, recipe_ratio: float, params: dict) -> float:
        """The attack step used when ``--alpha`` is not given."""
        return eps

    @classmethod
    def check_config(cls, eps: float, alpha: float, params: dict) -> None:
        """Refuse combinations of eps, alpha and parameters that make no sense."""

    @classmethod
    def check_model(cls, model: nn.Module, params: dict, num_classes: int) -> None:
        """Refuse, before any training, a model the method cannot train (a ConfigError naming the fix).
        ``model`` may be on the ``meta`` device (built without memory)."""

    # ---- training ----------------------------------------------------------
    def train_batch(self, model: nn.Module, batch: Batch, step: StepFn) -> StepOutput:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each epoch (0-based) on every process; may change the method's own state."""

    def strengthen(self, min_level: int = 1) -> str | None:
        """Make the attack stronger for the rest of the run (called by the engine's collapse guard, ``--guard``,
        which sets ``min_level``): twice the attack's level (steps or replays) per strengthening, the first time
        to at least ``min_level``, the same reach in smaller steps; adds one to :attr:`boost`. Returns what
        changed, or None when the method has no attack level to strengthen (nothing changes)."""
        return None


class Component(Stateful):
    """A part of a composed method (an attack, a loss or a schedule; see ``compose.py``).

    A method's registration holds a *spec*: the part as constructed (its constructor's arguments,
    :attr:`spec_args`), which declares the parameters it reads (:meth:`params`) and checks them
    (:meth:`check`), and never runs. :meth:`bind` builds each run's own running part: a new object
    constructed from the same arguments, given the run's context (:attr:`ctx`) and resolved parameter
    values (:attr:`v`). A running part may keep per-epoch statistics (``state``) and state that a
    resumed run needs (``state_dict``), set up in :meth:`reset`.
    """

    #: the run's context and parameter values: empty in a spec, given to a running part by :meth:`bind`
    ctx: MethodContext | None = None
    v: Mapping[str, Any] = MappingProxyType({})

    def __new__(cls, *args: Any, **kwargs: Any) -> "Component":
        part = super().__new__(cls)
        part.spec_args = (args, dict(kwargs))   # what bind() builds a running part from
        return part

    #: whether the part's strength is its schedule's level (the collapse guard strengthens by raising it)
    uses_level: ClassVar[bool] = True

    def params(self) -> tuple[Param, ...]:
        return ()

    def bind(self, ctx: MethodContext, values: dict) -> "Component":
        """A new running part of this spec for one run (the spec itself is left as it is)."""
        args, kwargs = self.spec_args
        part = type(self)(*args, **kwargs)
        part.ctx, part.v = ctx, values
        part.reset()
        return part

    def reset(self) -> None:
        """Set up the run's own state (called by :meth:`bind` on the running part)."""

    def check(self, eps: float, alpha: float, values: dict) -> None:
        """Refuse parameter values that make no sense together (a :class:`ConfigError` naming the fix)."""

    def end_epoch(self, epoch: int) -> None:
        """Called after each epoch (0-based); may update the part's own state."""
