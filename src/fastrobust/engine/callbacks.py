"""Watching a run: callbacks from Python and the built-in loggers (``--log tensorboard``).

A callback is any object with some of these methods, called in the main process:

- ``on_epoch_end(record)``: after each epoch, with the record written to ``metrics.jsonl``;
- ``on_checkpoint(path)``: after ``best.pt`` or ``last.pt`` was written;
- ``on_train_end(summary)``: after ``summary.json`` was written.

Other trackers (W&B, MLflow, ...) plug in the same way, e.g.
``class ToWandb: def on_epoch_end(self, record): wandb.log(record, step=record["epoch"])``.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FastrobustError

LOGGERS = ("tensorboard",)
HOOKS = ("on_epoch_end", "on_checkpoint", "on_train_end")


def check_callbacks(callbacks) -> list:
    """The callbacks as a list, each refused unless it has at least one of :data:`HOOKS`."""
    callbacks = list(callbacks or ())
    for cb in callbacks:
        if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
            raise ConfigError(f"callback {cb!r} has none of the methods {', '.join(HOOKS)}")
    return callbacks


def check_loggers(names) -> list[str]:
    """``--log`` names as a list; refuses unknown ones and a logger whose package is missing."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"log must be a list of loggers among {', '.join(LOGGERS)}, got {names!r}")
    names = [str(n).strip() for n in names]
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"--log {name!r}: unknown logger; available: {', '.join(LOGGERS)} (other trackers "
                              f"through callbacks=[...] in Python)")
    if "tensorboard" in names:
        _summary_writer()
    return names


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FastrobustError('--log tensorboard needs TensorBoard, which is not installed: '
                              'pip install "fastrobust[tensorboard]" (or pip install tensorboard)') from None
    return SummaryWriter


class TensorBoardLogger:
    """Writes every numeric field of each epoch's record as a scalar (step = epoch) to ``out/tensorboard``."""

    def __init__(self, out: Path):
        self.log_dir = Path(out) / "tensorboard"
        self.writer = None

    def on_epoch_end(self, record: dict) -> None:
        if self.writer is None:
            self.writer = _summary_writer()(log_dir=str(self.log_dir))
        for key, value in record.items():
            if key != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(key, float(value), record["epoch"])
        self.writer.flush()

    def on_train_end(self, summary: dict) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def build(loggers, out: Path, callbacks) -> list[Any]:
    """The run's callbacks: the built-in loggers named in ``loggers``, then the user's."""
    built: list[Any] = []
    for name in check_loggers(loggers):
        if name == "tensorboard":
            built.append(TensorBoardLogger(out))
    return built + check_callbacks(callbacks)


def call(callbacks, hook: str, arg) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if callable(fn):
            fn(arg)
