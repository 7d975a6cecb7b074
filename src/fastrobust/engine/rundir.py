"""The run folder's writers: the log, metrics and summary files, the folder's claim (lock, refusal of foreign
files, a restart after a first-epoch stop) and the reading of a saved configuration to resume.

:mod:`fastrobust.runfolder` names the files; this module writes them for a training job.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Callable

import yaml

from .. import trust
from ..config import DEVICES, RESUME_FREE, TrainConfig, differences, load_yaml, same_setting
from ..errors import ConfigError, FastrobustError
from ..methods import get_method
from ..runfolder import LOCK as LOCK_NAME
from ..runfolder import RunFolder
from . import callbacks as _callbacks
from .checkpoint import TMP_SUFFIX, atomic_write_text, remove_temporary_files, write_error
from .distributed import env_world_size
from .lock import RunLock


class RunLog:
    """Writes human lines to stdout and ``train.log``, and metrics to ``metrics.jsonl`` (main process only)."""

    def __init__(self, out: Path, enabled: bool, echo: Callable[[str], None] = print, callbacks=()):
        self.out, self.enabled, self.echo = out, enabled, echo
        self.folder = RunFolder(out)
        self.callbacks = list(callbacks) if enabled else []   # see .callbacks: called in the main process

    def info(self, line: str) -> None:
        if self.enabled:
            self.echo(line)
            self._append(self.folder.log, line + "\n")

    def note(self, line: str) -> None:
        """A line for train.log only (an error that the command line prints itself)."""
        if self.enabled:
            self._append(self.folder.log, line + "\n")

    def metrics(self, record: dict) -> None:
        if self.enabled:   # standard JSON: a NaN or infinite number is written as null
            self._append(self.folder.metrics, json.dumps(finite_json(record), allow_nan=False) + "\n")
            _callbacks.call(self.callbacks, "on_epoch_end", dict(record))

    def checkpoint(self, path: Path) -> None:
        _callbacks.call(self.callbacks, "on_checkpoint", path)

    def summary(self, summary: dict) -> None:
        """Write summary.json (the run's last file)."""
        atomic_write_text(self.folder.summary, json.dumps(finite_json(summary), indent=2, allow_nan=False) + "\n")

    def train_end(self, summary: dict) -> None:
        """Tell the callbacks that the run has ended (after summary.json and the last line)."""
        _callbacks.call(self.callbacks, "on_train_end", summary)

    def _append(self, path: Path, text: str) -> None:
        try:   # never through a symbolic link: only the run folder's own files are written
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if path.is_symlink():
                raise FastrobustError(f"{path} is a symbolic link; fastrobust writes only its own files in a run "
                                      f"folder: remove the link") from None
            raise write_error(path, exc) from None
        try:
            with os.fdopen(fd, "a") as fh:
                fh.write(text)
        except OSError as exc:
            raise write_error(path, exc) from None

    def keep_metrics_before(self, epoch: int) -> None:
        """On resume, drop metric lines of epochs that the checkpoint does not cover."""
        path = self.folder.metrics
        if self.enabled and path.exists():
            lines = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["epoch"] <= epoch]
            atomic_write_text(path, "".join(l + "\n" for l in lines))


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def read_metrics(out: Path) -> list[dict]:
    """The records of metrics.jsonl (none when it does not exist)."""
    path = RunFolder(out).metrics
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def epoch_line(r: dict, epochs: int) -> str:
    """An epoch's train.log line from its metrics record."""
    extra = "".join(f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}"
                    for k, v in r.items() if k not in _CORE_KEYS)
    return (f"epoch {r['epoch']}/{epochs}: loss {r['train_loss']:.4f} acc {pct(r['train_acc'])} | "
            f"val clean {pct(r['val_clean_acc'])} robust {pct(r['val_robust_acc'])} | "
            + (f"averaged clean {pct(r['val_wa_clean_acc'])} robust {pct(r['val_wa_robust_acc'])} | "
               if "val_wa_robust_acc" in r else "") +
            f"{r['passes']:.1f} passes/ex, {r['epoch_seconds']:.1f} s (lr {r['lr']:.3g}, eps {r['eps']:.3g}){extra}")


_CORE_KEYS = {"epoch", "lr", "eps", "train_loss", "train_acc", "val_clean_acc", "val_robust_acc",
              "epoch_passes", "passes", "epoch_seconds", "train_seconds",
              "epoch_cpu_seconds", "train_cpu_seconds", "guard", "val_fgsm_acc", "val_wa_clean_acc",
              "val_wa_robust_acc"}

NOT_LEARNED_HINT = ("train longer, ramp eps up over more epochs (--eps-warmup {longer}; this run: {warmup}), or "
                    "lower --eps or --lr; summary.json records learned: false")


def default_out_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.method}-{cfg.dataset}-{datetime.now():%Y%m%d-%H%M%S}"


# ---- the folder's claim ------------------------------------------------------------------------------------

class FolderClaim:
    """The run folder's lock, held by the main process from :meth:`take` until :meth:`release`."""

    def __init__(self) -> None:
        self.lock: RunLock | None = None

    def take(self, cfg: TrainConfig, out: Path | None, resume: bool) -> tuple[Path, list[str]]:
        """The output folder: the given one, or a new timestamped name, locked for this run; refuses to
        overwrite a run or to mix with another one; clears what killed writes left.
        Returns the folder and lines for the log."""
        out = out or default_out_dir(cfg)
        lock = RunLock(out, "fastrobust train" + (" --resume" if resume else ""))
        lock.acquire()
        self.lock = lock
        folder = RunFolder(out)
        _refuse_foreign(folder)
        has_checkpoint = folder.last.is_file()
        if not resume and (has_checkpoint or folder.summary.exists()):
            raise FastrobustError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        trust.remember(out, (cfg.model, cfg.dataset))   # the user named this code for this folder (see fastrobust.trust)
        notes = [] if has_checkpoint else _restart_attempt(cfg, folder)
        removed = remove_temporary_files(out, RunFolder.WRITTEN)
        if removed:
            notes.append(f"removed {len(removed)} temporary file(s) of interrupted writes: {', '.join(removed)}")
        return out, notes

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _restart_attempt(cfg: TrainConfig, folder: RunFolder) -> list[str]:
    """An attempt that stopped before its first checkpoint: the same run may start again there (its files
    removed); another run's is refused. Returns the lines for the log."""
    if not folder.config.is_file():
        return []
    out = folder.path
    diffs = differences(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), load_yaml(folder.config))
    if diffs:
        raise FastrobustError(f"{out} holds the config.yaml of another run that stopped before its first "
                              f"checkpoint ({'; '.join(diffs[:3])}): choose another --out, or delete {out} to "
                              f"start this run there")
    for name in RunFolder.ATTEMPT:
        (out / name).unlink(missing_ok=True)
    return [f"{out} holds an attempt of this run that stopped before its first checkpoint: starting "
            f"again from epoch 0 (its metrics removed)"]


def _refuse_foreign(folder: RunFolder) -> None:
    """Refuse a folder holding what fastrobust did not write: files of other names, a run file without
    the run's config.yaml, or a run file that is a symbolic link (nothing of the user's is touched)."""
    entries = [p for p in folder.path.iterdir()
               if not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)) and p.name != LOCK_NAME]
    links = [p.name for p in entries if p.is_symlink()]
    foreign = [p.name for p in entries if p.name not in RunFolder.KNOWN]
    ours = folder.config.is_file() and not folder.config.is_symlink() and _is_run_config(folder.config)
    if links or foreign or (entries and not ours):
        names = sorted(links or foreign or [p.name for p in entries])
        what = "symbolic links" if links else "files that fastrobust did not write"
        raise FastrobustError(f"{folder} holds {what} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
                              f"a run writes only into an empty folder or its own run folder, so nothing of yours "
                              f"is overwritten: choose a new or empty --out")


def _is_run_config(path: Path) -> bool:
    try:
        saved = load_yaml(path)
    except FastrobustError:
        return False
    return {"method", "dataset", "model"} <= set(saved)


# ---- resuming: the saved configuration ----------------------------------------------------------------------

def finished_summary(out: Path, echo: Callable[[str], None]) -> dict:
    """``--resume`` of a finished run: say so and change nothing; its summary."""
    try:
        summary = json.loads(RunFolder(out).summary.read_text())
    except (OSError, ValueError) as exc:
        raise FastrobustError(f"--resume: {RunFolder(out).summary} cannot be read ({type(exc).__name__}); the run "
                              f"in {out} finished but its summary is damaged") from None
    if env_world_size() <= 1 or os.environ.get("RANK", "0") == "0":
        echo(f"{out}: this run has finished (summary.json); nothing to resume and nothing was changed. Evaluate it "
             f"again with `fastrobust eval {out}`, or train more with a new --out")
    return summary


def resume_config(cfg: TrainConfig, resume: bool, given: set[str] | None = None, trust_code: bool = False,
                  supplied: tuple[str, ...] = ()) -> tuple[TrainConfig, Path | None]:
    """The configuration to run (the saved one when resuming) and the output folder, if known yet.

    A run folder with config.yaml but no last.pt (stopped in its first epoch) can be resumed:
    it starts again from epoch 0. ``supplied``: references whose objects the caller hands over
    (``fit``'s model and data), never imported."""
    if cfg.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    out = Path(cfg.out) if cfg.out else None
    if resume:
        out = out or default_out_dir(cfg)
        if not RunFolder(out).last.is_file() and not RunFolder(out).config.is_file():
            hint = " Under torchrun on several machines --out must be a folder that every machine sees." \
                if env_world_size() > 1 else ""
            raise FastrobustError(f"--resume: {out} holds no last.pt to resume from (was the run started with "
                                  f"--out {out}?).{hint}")
        named = {getattr(cfg, k) for k in ("model", "dataset")
                 if (k in given if given is not None else getattr(cfg, k) != getattr(TrainConfig(), k))}
        cfg = merge_for_resume(cfg, out, given)
        trust.require({"model factory": cfg.model, "data set factory": cfg.dataset}, out, trust_code,
                      named | set(supplied))
    return cfg, out


def merge_for_resume(cfg: TrainConfig, out: Path, given: set[str] | None = None) -> TrainConfig:
    """The saved configuration, with a check that no result-changing option was changed.

    ``given``: the keys given explicitly (on the command line or in --config), each compared with
    the saved value even where it equals the default (``--method pgd`` on a natural run is refused);
    None: the keys whose value differs from the default."""
    saved = TrainConfig().update(load_yaml(RunFolder(out).config), f"{RunFolder(out).config}")
    if saved.method_params:   # a saved run's parameters are resolved; those newer than it: as it behaved then
        with contextlib.suppress(ConfigError):
            saved.method_params = get_method(saved.method).saved_params(saved.method_params)
    values = cfg.to_dict()
    defaults = TrainConfig().to_dict()
    explicit = (lambda key: key in given) if given is not None else (lambda key: values[key] != defaults[key])
    for key, value in values.items():
        if key in RESUME_FREE or not explicit(key) or same_setting(key, value, getattr(saved, key)):
            continue
        if key == "method_params" and isinstance(value, dict) and \
                all(saved.method_params.get(k.replace("-", "_")) == v for k, v in value.items()):
            continue   # a partial set of parameters that agrees with the saved (resolved) ones
        raise ConfigError(f"--resume: {key} was {getattr(saved, key)!r} when the run started, now {value!r}; "
                          f"a resumed run keeps its configuration (drop that option, or start a new run with "
                          f"another --out to change it)")
    for key in RESUME_FREE:
        if explicit(key):
            setattr(saved, key, values[key])
    return saved

