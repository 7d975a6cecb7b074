"""AutoAttack (Croce & Hein 2020) through the original implementation, the ``pyautoattack`` package.

:class:`AutoAttackRunner` runs one component at a time (``apgd-ce``, ``apgd-t``,
``fab-t``, ``square``, ...) with the settings of AutoAttack's standard version,
on the examples it is given, and returns the adversarial examples, so the
caller knows per example which component fooled it. Running the standard
components one after the other on the examples still robust is exactly what
``AutoAttack.run_standard_evaluation`` does.

pyautoattack's messages (its own sanity checks: zero gradients, randomised or
dynamic defences) go to the ``auto-attack`` logger; they are collected here
instead of printed. It reseeds the global RNG and clears ``sys.settrace``; both
are restored afterwards.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError
from .specs import SQUARE_QUERIES

LOGGER = "auto-attack"
NORMS = {"linf": "Linf", "l2": "L2"}
#: Fewest classes each component needs (targeted DLR uses the 4 largest logits, DLR the 3 largest).
MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "apgd-t": 4, "fab-t": 2, "square": 2}
#: Target classes of APGD-T and FAB-T in the standard version (fewer when the model has fewer classes).
TARGET_CLASSES = 9


def pyautoattack_version() -> str | None:
    """The installed pyautoattack version, or None."""
    try:
        import pyautoattack
    except ImportError:
        return None
    return getattr(pyautoattack, "__version__", "unknown")


def _import():
    try:
        import pyautoattack
    except ImportError:
        raise ConfigError("AutoAttack needs the pyautoattack package: pip install pyautoattack") from None
    return pyautoattack


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().replace("See flags_doc.md for details.", "(see AutoAttack's flags_doc.md)")
        if message not in self.sink:
            self.sink.append(message)


@contextmanager
def quiet_autoattack(sink: list[str]) -> Iterator[None]:
    """Route pyautoattack's warnings into ``sink`` (nothing is printed), keep the global RNG
    and the trace function (its dynamic-defence check calls ``sys.settrace(None)``)."""
    logger = logging.getLogger(LOGGER)
    handler, saved = _Collect(sink), (logger.level, logger.propagate, sys.gettrace())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        sys.settrace(saved[2])


class AutoAttackRunner:
    """pyautoattack's ``AutoAttack`` in its standard configuration, one component at a time."""

    def __init__(self, model: nn.Module, *, eps: float, norm: str, num_classes: int, device, seed: int,
                 queries: int = SQUARE_QUERIES, messages: list[str] | None = None):
        self.messages = [] if messages is None else messages
        self.num_classes = num_classes
        with quiet_autoattack(self.messages):
            self.aa = _import().AutoAttack(model, eps=eps, norm=NORMS[norm], version="standard",
                                           device=device, seed=seed)
        self.aa.verbose = False   # its progress lines; warnings still reach the logger
        targets = min(TARGET_CLASSES, num_classes - 1)
        self.aa.apgd_targeted.n_target_classes = targets
        self.aa.fab.n_target_classes = targets
        self.aa.square.n_queries = queries
        self.settings = {
            "implementation": "pyautoattack (Croce & Hein 2020), standard version settings",
            "norm": NORMS[norm], "eps": eps, "seed": seed, "target_classes": targets, "square_queries": queries,
            "apgd_iterations": self.aa.apgd.n_iter, "fab_iterations": self.aa.fab.n_iter,
        }

    def can_run(self, component: str) -> bool:
        return self.num_classes >= MIN_CLASSES[component]

    def run(self, component: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples of ``component`` for ``x`` (float, [0,1], on the device) and ``y``;
        examples it cannot fool come back unchanged."""
        self.aa.attacks_to_run = [component]
        with quiet_autoattack(self.messages), torch.random.fork_rng(devices=_cuda_devices(x)):
            x_adv, _ = self.aa.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv.detach()


def _cuda_devices(x: torch.Tensor) -> list:
    return [x.device] if x.device.type == "cuda" else []
