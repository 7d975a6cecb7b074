"""The files of a run folder, named in one place.

``fastrobust train`` writes a run folder; evaluation, bench, reports and export
read it. :class:`RunFolder` knows the name of each file, so no module spells
them out::

    run = RunFolder("runs/pgd")
    run.config   # runs/pgd/config.yaml: the resolved configuration
    run.metrics  # metrics.jsonl: one JSON record per epoch
    run.summary  # summary.json: the final summary (written last)
    run.last     # last.pt: the checkpoint to resume from
    run.best     # best.pt: the selected checkpoint (highest validation robust accuracy)
    run.log      # train.log: the human-readable log
    run.eval     # eval.json: `fastrobust eval`'s result
    run.lock     # .lock: the writer's lock file
    run.curves   # curves.png: `fastrobust report`'s plot

This module imports nothing of fastrobust: every layer may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAST = "last.pt"
BEST = "best.pt"
LOG = "train.log"
EVAL = "eval.json"
EVAL_AA = "eval-aa.json"         # AutoAttack on its own (smaller) subset: a bench suite's `aa_subset`
LOCK = ".lock"
CURVES = "curves.png"


@dataclass(frozen=True)
class RunFolder:
    """A run folder ``path`` and the paths of its files."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    last = property(lambda self: self.path / LAST)
    best = property(lambda self: self.path / BEST)
    log = property(lambda self: self.path / LOG)
    eval = property(lambda self: self.path / EVAL)
    eval_aa = property(lambda self: self.path / EVAL_AA)
    lock = property(lambda self: self.path / LOCK)
    curves = property(lambda self: self.path / CURVES)

    #: files whose killed writes leave temporary files (``.NAME.*.tmp``; the lock's ``.lock.*.tmp``)
    #: that a starting run removes
    WRITTEN = (CONFIG, METRICS, LAST, BEST, SUMMARY, LOCK.lstrip("."))
    #: files of an attempt that stopped before its first checkpoint (removed when the run starts again there)
    ATTEMPT = (METRICS, BEST, SUMMARY, EVAL, EVAL_AA, CURVES)
    #: files that a rerun of ``fastrobust bench`` removes before training a run again
    STALE = (CONFIG, METRICS, LOG, BEST, CURVES, EVAL, EVAL_AA)
    #: every name fastrobust writes in a run folder (``export``: the default folder of ``fastrobust export``)
    KNOWN = (CONFIG, METRICS, SUMMARY, LAST, BEST, LOG, EVAL, EVAL_AA, LOCK, CURVES, "export")
    #: any of these makes a folder a run folder (possibly unfinished)
    MARKERS = (SUMMARY, CONFIG, METRICS)

    def is_run(self) -> bool:
        """Whether the folder holds a run (finished or not)."""
        return any((self.path / name).is_file() for name in self.MARKERS)
