"""The training loop shared by every method.

The engine owns the optimizer, the LR and eps schedules, epochs, evaluation
on the validation split, checkpoints, logging, timing and cost accounting.
It never knows which method runs: it hands each minibatch to
``method.train_batch`` with a ``step`` function and adds up what the method
reports.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import __version__, trust
from ..attacks import threat_model
from ..config import DEVICES, TrainConfig, load_yaml, recipe_ratio, recipe_step, resolve, save_yaml, validate
from ..data import DATASETS, DeviceLoader, load_dataset, split_validation, take_subset
from ..data.core import check_classes, learning_verdict, validation_share_note
from ..data.stream import StreamLoader, lazy
from ..errors import ConfigError, FastrobustError
from ..factories import is_factory_ref
from ..methods import Batch, MethodContext, get_method
from ..runfolder import LOCK as LOCK_NAME
from ..runfolder import RunFolder
from . import callbacks as _callbacks
from .checkpoint import (atomic_write_text, build_model, check_model, load_checkpoint, model_spec,
                         TMP_SUFFIX, remove_temporary_files, save_checkpoint, write_error)
from .device import pick_device, sync
from .guard import Guard
from .distributed import (Dist, PeerLost, derived_seed, env_world_size, global_batch_sizes, init_from_env,
                          is_peer_loss, shard_weight)
from .lock import RunLock
from .schedules import LRSchedule, eps_scale
from .validation import evaluate_sharded


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


@dataclass
class Prepared:
    cfg: TrainConfig
    info: object
    train: object
    val: object
    test: object
    notes: list   # lines for the log: settings adjusted to the data
    warnings: list = field(default_factory=list)   # about the data (logged once, in summary.json: data_warnings)


def prepare(cfg: TrainConfig) -> Prepared:
    """Resolve and validate the configuration, then load and split the data.

    Every check that needs no data runs before the data is loaded.
    """
    method_cls = get_method(cfg.method)
    if cfg.dataset not in DATASETS and cfg.dataset != "imagefolder" and not is_factory_ref(cfg.dataset):
        raise ConfigError(f"unknown dataset {cfg.dataset!r}. Available: {', '.join(sorted([*DATASETS, 'imagefolder']))}")
    known_info = DATASETS.get(cfg.dataset)
    if known_info is not None:
        _resolve_and_check(cfg, known_info, method_cls)
    data = load_dataset(cfg.dataset, cfg.data_dir, stream=cfg.stream)
    resolved = _resolve_and_check(cfg, data.info, method_cls)
    train, val = split_validation(data.train, resolved.val_size, seed=resolved.seed) if data.val is None \
        else (data.train, data.val)   # a validation split given with the data
    notes, warnings = [], list(data.notes)
    share = validation_share_note(len(data.train), len(val)) if data.val is None else None
    warnings += [share] if share else []
    # a subset larger than the split: the whole split, and config.yaml records the real number
    for key, split, what in (("train_subset", train, "training examples left after the validation split"),
                             ("test_subset", data.test, "test examples")):
        asked = getattr(resolved, key)
        if asked is not None and asked > len(split) >= 1:
            notes.append(f"--{key.replace('_', '-')} {asked} is more than the {len(split)} {what}: using all "
                         f"{len(split)} (config.yaml records {key}: {len(split)})")
            setattr(resolved, key, len(split))
    train = take_subset(train, resolved.train_subset, seed=resolved.seed)
    test = take_subset(data.test, resolved.test_subset, seed=resolved.seed)
    if len(train) < 1:
        raise ConfigError("no training examples left after the validation split; lower --val-size")
    for split, what in ((train, "the training examples left after the validation split and --train-subset"),
                        (test, "the test examples (after --test-subset)")):
        check_classes(split, what, "use a larger subset")
    return Prepared(resolved, data.info, train, val, test, notes, warnings)


def _resolve_and_check(cfg, info, method_cls) -> TrainConfig:
    resolved = resolve(cfg, info, method_cls)
    validate(resolved)
    method_cls.check_config(resolved.eps, resolved.alpha, resolved.method_params)
    # build the model (without memory where possible) to refuse unknown names/options and a wrong output now
    check_model(model_spec(resolved.model, info, resolved.model_options, resolved.normalize))
    _callbacks.check_loggers(resolved.log)
    return resolved


PEER_LOSS_GRACE_S = 3.0   # see train()


def default_out_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.method}-{cfg.dataset}-{datetime.now():%Y%m%d-%H%M%S}"


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None,
          echo: Callable[[str], None] = print, given: set[str] | None = None, callbacks=(),
          trust_code: bool = False) -> dict:
    """Run one training job to the end and return its summary (also written to ``summary.json``).

    ``callbacks``: objects with ``on_epoch_end(record)``, ``on_checkpoint(path)`` and/or
    ``on_train_end(summary)`` methods (see :mod:`.callbacks`), called in the main process.

    Under ``torchrun`` every process calls this with the same arguments; together
    they train one model with DistributedDataParallel (see :mod:`.distributed`),
    only the main process writes files, and every process returns the summary.

    The main process holds the run folder's lock (:class:`.lock.RunLock`) while it runs.
    With ``resume``, the keys named in ``given`` (the ones the user gave explicitly) must
    equal the run's saved configuration; without ``given``, the keys that differ from the
    defaults. A resumed run's model or data factory (``package.module:callable``) that the user does not
    give again is imported only when trusted (``trust_code``, or see :mod:`fastrobust.trust`). Resuming
    a finished run changes nothing and returns its summary.
    A NaN or infinite loss or weight stops training with a :class:`TrainingDiverged`.
    """
    # work that reads files or picks the device comes before the process group exists;
    # an error there is raised after joining it, so that it shows once and no process waits
    setup_error, device = None, torch.device("cpu")
    try:
        cfg, out = _resume_config(cfg, resume, given, trust_code)
        if resume and RunFolder(out).summary.is_file():
            return _finished(out, echo)
        device = pick_device(cfg.device)
    except FastrobustError as exc:
        if env_world_size() <= 1:
            raise
        setup_error, out = exc, None
    dist, device = init_from_env(device, cfg.dist_timeout)
    failed = True
    locks: list[RunLock] = []   # the run folder's lock, held by the main process
    try:
        dist.agree(lambda: _raise(setup_error))
        summary = _train(cfg, out, dist, device, resume, progress, echo, locks, _callbacks.check_callbacks(callbacks))
        failed = False
        return summary
    except BaseException as exc:
        if dist.enabled:   # the frames of the traceback hold the DDP model: let it go (see below)
            traceback.clear_frames(exc.__traceback__)
        if dist.enabled and isinstance(exc, Exception) and not isinstance(exc, FastrobustError) and is_peer_loss(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            lost = PeerLost(f"process {dist.rank} of {dist.world_size} lost contact with the others: another process "
                            f"probably failed (its error is shown above) or the wait exceeded --dist-timeout "
                            f"({cfg.dist_timeout:g} s). ({first})")
            if "TORCHELASTIC_RUN_ID" in os.environ:
                # let torchrun see the process that failed exit first (it reports the first as the root
                # cause) and stop this one; the message is shown now in case it does
                print(f"fastrobust: error: {lost}", file=sys.stderr, flush=True)
                lost.quiet = True
                time.sleep(PEER_LOSS_GRACE_S)
            raise lost from None
        raise
    finally:
        if dist.enabled:
            # The DDP model holds the process group: free it (its reference cycles too) before leaving the
            # group, so that Gloo's threads stop while Python is fully alive, not at interpreter exit (SIGABRT)
            gc.collect()
        for lock in locks:
            lock.release()
        dist.shutdown(failed)


def _raise(error: BaseException | None) -> None:
    if error is not None:
        raise error


def _finished(out: Path, echo: Callable[[str], None]) -> dict:
    """``--resume`` of a finished run: say so and change nothing."""
    try:
        summary = json.loads(RunFolder(out).summary.read_text())
    except (OSError, ValueError) as exc:
        raise FastrobustError(f"--resume: {RunFolder(out).summary} cannot be read ({type(exc).__name__}); the run "
                              f"in {out} finished but its summary is damaged") from None
    if env_world_size() <= 1 or os.environ.get("RANK", "0") == "0":
        echo(f"{out}: this run has finished (summary.json); nothing to resume and nothing was changed. Evaluate it "
             f"again with `fastrobust eval {out}`, or train more with a new --out")
    return summary


def _resume_config(cfg: TrainConfig, resume: bool, given: set[str] | None = None,
                   trust_code: bool = False) -> tuple[TrainConfig, Path | None]:
    """The configuration to run (the saved one when resuming) and the output folder, if known yet.

    A run folder with config.yaml but no last.pt (stopped in its first epoch) can be resumed:
    it starts again from epoch 0."""
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
        cfg = _merge_for_resume(cfg, out, given)
        trust.require({"model factory": cfg.model, "data set factory": cfg.dataset}, out, trust_code, named)
    return cfg, out


def _claim_out(cfg: TrainConfig, out: Path | None, resume: bool, locks: list) -> tuple[Path, list[str]]:
    """The output folder (main process): the given one, or a new timestamped name, locked for this run;
    refuses to overwrite a run or to mix with another one; clears what killed writes left.
    Returns the folder and lines for the log."""
    out = out or default_out_dir(cfg)
    lock = RunLock(out, "fastrobust train" + (" --resume" if resume else ""))
    lock.acquire()
    locks.append(lock)
    notes, folder = [], RunFolder(out)
    _refuse_foreign(folder)
    has_checkpoint = folder.last.is_file()
    if not resume and (has_checkpoint or folder.summary.exists()):
        raise FastrobustError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    trust.remember(out, (cfg.model, cfg.dataset))   # the user named this code for this folder (see fastrobust.trust)
    if not has_checkpoint and folder.config.is_file():
        # an attempt that stopped before its first checkpoint: the same run may start again there
        diffs = _differences(cfg, load_yaml(folder.config))
        if diffs:
            raise FastrobustError(f"{out} holds the config.yaml of another run that stopped before its first "
                                  f"checkpoint ({'; '.join(diffs[:3])}): choose another --out, or delete {out} to "
                                  f"start this run there")
        for name in RunFolder.ATTEMPT:
            (out / name).unlink(missing_ok=True)
        notes.append(f"{out} holds an attempt of this run that stopped before its first checkpoint: starting "
                     f"again from epoch 0 (its metrics removed)")
    removed = remove_temporary_files(out, RunFolder.WRITTEN)
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) of interrupted writes: {', '.join(removed)}")
    return out, notes


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


def _differences(cfg: TrainConfig, saved: dict) -> list[str]:
    """The result-changing settings of ``cfg`` (resolved) that differ from a saved config.yaml."""
    import yaml

    mine = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    defaults = TrainConfig().to_dict()   # a key newer than the saved file: that run had its default
    return [f"{key} {saved.get(key, defaults[key])!r} there, {value!r} now" for key, value in mine.items()
            if key not in _RESUME_FREE and saved.get(key, defaults[key]) != value]


def _prepare_for(cfg: TrainConfig, dist: Dist, device: torch.device) -> Prepared:
    """:func:`prepare`, and the checks that only several processes need."""
    prep = prepare(cfg)
    if dist.enabled:
        c = prep.cfg
        if c.batch_size % dist.world_size:
            raise ConfigError(f"--batch-size {c.batch_size} is the global minibatch, split among {dist.world_size} "
                              f"processes: it must be divisible by {dist.world_size}")
        if len(prep.train) < dist.world_size:
            raise ConfigError(f"{len(prep.train)} training examples cannot be shared among {dist.world_size} processes")
        if c.sync_bn and device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA GPUs (SyncBatchNorm does not run on the CPU). Without it, "
                              "the processes' BatchNorm statistics are averaged after every step")
    if prep.cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"--amp fp16 needs a CUDA GPU (float16 autocast with loss scaling); this run is on the "
                          f"{device.type.upper()}: use --amp bf16 there, or --amp none (fp32)")
    return prep


# ---- one training job, in parts -------------------------------------------------------------------
# _train runs them in order: _setup_run (data, folder, model, optimizer, method, resume), then per epoch
# _train_epoch (each minibatch through _train_batch) and _end_epoch (validation -> best selection ->
# checkpoints), then _finish (test evaluation of the best checkpoint, summary.json). fastrobust.train
# and fastrobust.fit both come here.

def _train(cfg: TrainConfig, out: Path | None, dist: Dist, device: torch.device, resume: bool,
           progress: bool | None, echo: Callable[[str], None], locks: list, user_callbacks=()) -> dict:
    run = _setup_run(cfg, out, dist, device, resume, progress, echo, locks, user_callbacks)
    for epoch in range(run.state["epoch"], run.cfg.epochs):
        result = _train_epoch(run, epoch)
        _end_epoch(run, result)
    return _finish(run)


@dataclass
class Run:
    """What one training job holds while it runs (built by :func:`_setup_run`)."""

    cfg: TrainConfig
    prep: Prepared
    folder: RunFolder
    dist: Dist
    device: torch.device
    log: RunLog
    progress: bool | None
    loader: object                 # iterates this process's (x, y) minibatches; set_epoch(e) selects the epoch
    spec: dict                     # how to rebuild the model (saved in every checkpoint)
    raw_model: torch.nn.Module     # the model itself (its state_dict is what checkpoints hold)
    model: torch.nn.Module         # what the method trains: raw_model, or its DDP / compiled wrapper
    params: list
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    method_cls: type
    method: object
    autocast: Callable
    sizes: list[int]               # the global minibatch sizes of an epoch
    val_alpha: float
    # epoch: epochs done; passes, train_seconds, train_cpu_seconds: totals so far;
    # best_score, best_epoch: the checkpoint selection (see _select_best)
    state: dict = field(default_factory=lambda: {"epoch": 0, "passes": 0.0, "train_seconds": 0.0,
                                                 "train_cpu_seconds": 0.0, "best_score": [-1.0, -1.0],
                                                 "best_epoch": 0})
    # Each process backpropagates its shard's mean loss times this weight, so that DDP's average of
    # the processes' gradients is the gradient of the global minibatch's mean loss (weight 1 when
    # the shards are equal, i.e. for every minibatch but perhaps the last of an epoch).
    loss_weight: float = 1.0
    guard: Guard = field(default_factory=lambda: Guard(False))   # the collapse mark, and --guard's recovery

    @property
    def out(self) -> Path:
        return self.folder.path


@dataclass
class EpochResult:
    """One epoch's training, summed over the processes (see :func:`_train_epoch`)."""

    epoch: int            # 1-based: the number of epochs done after it
    lr: float             # of the epoch's last minibatch
    eps: float            # of the epoch's last minibatch (after warm-up)
    loss: float           # mean training loss
    acc: float            # training accuracy (on the method's training logits)
    passes: float         # forward-backward passes per training example
    seconds: float        # wall seconds (of the slowest process)
    cpu_seconds: float    # CPU seconds (summed over the processes)


def _setup_run(cfg: TrainConfig, out: Path | None, dist: Dist, device: torch.device, resume: bool,
               progress: bool | None, echo: Callable[[str], None], locks: list, user_callbacks=()) -> Run:
    """Load the data, claim and lock the run folder, build the model, optimizer and method, and restore
    them from last.pt when resuming; returns the :class:`Run`."""
    prep = dist.local_main_first(lambda: _prepare_for(cfg, dist, device))
    cfg, info = prep.cfg, prep.info
    out, notes = dist.on_main(lambda: _claim_out(cfg, out, resume, locks))
    folder = RunFolder(out)
    cfg.out = str(out)
    # resuming a folder that holds no checkpoint yet (stopped in its first epoch): start from epoch 0
    resume = resume and dist.on_main(lambda: folder.last.is_file())
    dist.main_only(lambda: save_yaml(cfg, folder.config))
    log = RunLog(out, dist.is_main, echo, _callbacks.build(cfg.log, out, user_callbacks) if dist.is_main else ())
    for line in notes + prep.notes + [f"warning: {w}" for w in prep.warnings]:
        log.info(line)
    torch.manual_seed(cfg.seed + dist.rank)

    loader = _make_loader(prep, dist, device)
    spec = model_spec(cfg.model, info, cfg.model_options, cfg.normalize)
    model = build_model(spec).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw_model, model = dist.wrap(model, device, sync_bn=cfg.sync_bn)
    if cfg.compile:
        model = torch.compile(model)

    params = [p for p in raw_model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    schedule = LRSchedule.from_config(cfg)

    method_cls = get_method(cfg.method)
    method = method_cls(
        MethodContext(num_classes=info.num_classes, input_std=raw_model.input_std.to(device), epochs=cfg.epochs,
                      batches_per_epoch=len(loader), all_reduce_sum=dist.all_reduce_sum,
                      threat=threat_model(cfg.norm), eps=cfg.eps, alpha=cfg.alpha, eps_warmup=cfg.eps_warmup),
        **cfg.method_params,
    )
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    run = Run(cfg=cfg, prep=prep, folder=folder, dist=dist, device=device, log=log, progress=progress, loader=loader,
              spec=spec, raw_model=raw_model, model=model, params=params, opt=opt, scaler=scaler, schedule=schedule,
              method_cls=method_cls, method=method, autocast=autocast,
              sizes=global_batch_sizes(len(prep.train), cfg.batch_size),
              val_alpha=recipe_step(cfg.eps, cfg.val_steps, recipe_ratio(cfg.norm, info)), guard=Guard(cfg.guard))

    if resume:
        _restore(run)
    else:
        log.info(f"training {cfg.method} on {cfg.dataset} ({len(prep.train)} train / {len(prep.val)} val / "
                 f"{len(prep.test)} test) with {cfg.model} on {device}, eps {cfg.eps:.4g}, alpha {cfg.alpha:.4g}, "
                 f"{cfg.epochs} epochs -> {out}")
    if dist.enabled:
        log.info(f"{dist.world_size} processes ({'NCCL' if device.type == 'cuda' else 'Gloo'}), "
                 f"{cfg.batch_size // dist.world_size} examples each per global minibatch of {cfg.batch_size}"
                 + (", SyncBatchNorm" if cfg.sync_bn else ""))
    elif cfg.sync_bn:
        log.info("--sync-bn has no effect with one process")
    if dist.enabled and run.sizes[-1] < dist.world_size:
        log.info(f"the last minibatch of each epoch ({run.sizes[-1]} example(s), fewer than the {dist.world_size} "
                 f"processes) is skipped")
    return run


def _make_loader(prep: Prepared, dist: Dist, device: torch.device):
    """The training minibatches of this process: the whole split held on the device, or with --stream read
    by a DataLoader's workers (the same minibatches: see :mod:`fastrobust.data.stream`)."""
    cfg, info = prep.cfg, prep.info
    common = dict(shuffle=True, device=device, seed=cfg.seed, crop_pad=info.crop_pad, flip=info.flip,
                  rank=dist.rank, world_size=dist.world_size)
    if cfg.stream:
        return StreamLoader(lazy(prep.train), cfg.batch_size, workers=cfg.workers, **common)
    return DeviceLoader(prep.train, cfg.batch_size, **common)


def _restore(run: Run) -> None:
    """Continue from last.pt: weights, optimizer, loss scaler, method state, counters and random streams."""
    dist, device, log, out = run.dist, run.device, run.log, run.out
    ckpt = dist.agree(lambda: load_checkpoint(run.folder.last))
    run.raw_model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.state = state = ckpt["state"]
    saved = ckpt.get("ranks") or [{"rng": ckpt["rng"], "method": ckpt["method"]}]
    mine = saved[dist.rank] if len(saved) == dist.world_size else saved[0]
    run.method.load_state_dict(mine["method"])
    run.guard.load_state_dict(ckpt.get("guard"))
    if len(saved) == dist.world_size or dist.is_main:
        _set_rng(mine["rng"], device)
    else:   # another number of processes than when saved: fresh streams for the other processes
        torch.manual_seed(derived_seed(run.cfg.seed, state["epoch"], dist.rank))
    log.keep_metrics_before(state["epoch"])
    dist.main_only(lambda: _restore_best(out, ckpt, run.spec))
    log.info(f"resuming {out} after epoch {state['epoch']}" + (
        f" with {dist.world_size} processes (saved with {len(saved)}: the other processes start fresh random "
        f"streams and take process 0's method state)" if len(saved) != dist.world_size else ""))


def _make_step(run: Run) -> Callable:
    """The ``step(loss, wrt=None)`` that methods call: one optimizer step on ``loss`` (returning the
    gradient with respect to ``wrt`` when given, for methods that reuse it)."""
    cfg, dist, opt, scaler = run.cfg, run.dist, run.opt, run.scaler

    def step(loss: torch.Tensor, wrt: torch.Tensor | None = None):
        opt.zero_grad(set_to_none=True)
        if wrt is not None:
            wrt.grad = None
        if run.loss_weight != 1.0:
            loss = loss * run.loss_weight
        scaler.scale(loss).backward()
        grad = None
        if wrt is not None:
            grad = wrt.grad.detach()
            if scaler.is_enabled():   # the scale as a device tensor: no host read (get_scale() would sync)
                grad = grad / scaler._get_scale_async()
            if dist.enabled:   # the gradient of the global minibatch's mean loss, as with one process
                grad = grad / dist.world_size
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        dist.average_buffers(run.raw_model)
        return grad

    return step


# the per-epoch sums of _train_epoch (float64, on the device): loss*n, correct, n, passes,
# minibatches with a non-finite loss, non-finite weights
_LOSS, _CORRECT, _SEEN, _PASSES, _BAD_BATCHES, _BAD_WEIGHTS = range(6)


def _train_batch(run: Run, step: Callable, epoch: int, i: int, x: torch.Tensor, y: torch.Tensor,
                 totals: torch.Tensor) -> tuple[float, float, object]:
    """The method's work on minibatch ``i`` of ``epoch`` at its learning rate and eps; adds its loss, correct
    predictions and non-finite flag to ``totals`` in place on the device (no host sync).
    Returns (lr, eps scale, the method's output)."""
    cfg = run.cfg
    run.loss_weight = shard_weight(len(y), run.sizes[i], run.dist.world_size)
    t = epoch + i / len(run.loader)
    lr = run.schedule(t)
    for group in run.opt.param_groups:
        group["lr"] = lr
    scale = eps_scale(t, cfg.eps_warmup)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with run.autocast():
        out_b = run.method.train_batch(run.model, Batch(x, y, cfg.eps * scale, cfg.alpha * scale), step)
    loss_b = out_b.loss.detach()
    totals[_LOSS].add_(loss_b, alpha=len(y))
    totals[_CORRECT].add_((out_b.logits.argmax(1) == y).sum())
    totals[_BAD_BATCHES].add_(~torch.isfinite(loss_b).all())   # the on-device NaN/inf flag, read once per epoch
    return lr, scale, out_b


def _train_epoch(run: Run, epoch: int) -> EpochResult:
    """Train one epoch (every process its shard of each global minibatch), add its passes and seconds to
    the run's totals, and return its result; a NaN or infinite loss or weight raises :class:`TrainingDiverged`."""
    cfg, dist, device, loader = run.cfg, run.dist, run.device, run.loader
    step = _make_step(run)
    n_batches = len(loader)
    loader.set_epoch(epoch)
    run.model.train()
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    seen_n, passes_n = 0, 0.0
    lr = scale = None
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(loader, total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=True if not dist.is_main else (None if run.progress is None else not run.progress))
    for i, (x, y) in enumerate(bar):
        if run.sizes[i] < dist.world_size:
            continue   # some process would get no example (the same on every process)
        lr, scale, out_b = _train_batch(run, step, epoch, i, x, y, totals)
        seen_n += len(y)
        passes_n += out_b.passes
        if i % 10 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{out_b.loss.item():.3f}", lr=f"{lr:.3g}")
    run.method.on_epoch_end(epoch)
    sync(device)
    epoch_seconds = time.perf_counter() - start
    # CPU seconds of this process (all its threads): unlike wall time, barely moved by other
    # processes sharing the machine; equals wall time x threads when the threads are busy.
    # Over several processes: wall seconds of the slowest, CPU seconds summed.
    epoch_cpu_seconds = time.process_time() - cpu_start
    totals[_SEEN], totals[_PASSES] = seen_n, passes_n
    totals[_BAD_WEIGHTS] = _non_finite_tensors(run.raw_model)   # checked before any checkpoint is written
    loss_sum, correct, seen, passes, bad_batches, bad_weights = dist.all_reduce_sum(totals).tolist()
    epoch_seconds, epoch_cpu_seconds = _reduce_seconds(dist, epoch_seconds, epoch_cpu_seconds)
    result = EpochResult(epoch + 1, lr, cfg.eps * scale, loss_sum / seen, correct / seen,
                         passes / len(run.prep.train), epoch_seconds, epoch_cpu_seconds)
    if bad_batches or bad_weights or not math.isfinite(loss_sum):
        _stop_diverged(run, result, int(bad_batches), n_batches, bool(bad_weights))
    state = run.state
    state["passes"] += result.passes
    state["train_seconds"] += result.seconds
    state["train_cpu_seconds"] = state.get("train_cpu_seconds", 0.0) + result.cpu_seconds
    return result


def _stop_diverged(run: Run, result: EpochResult, bad_batches: int, n_batches: int, bad_weights: bool) -> None:
    """Log the diverged epoch's record (without accuracies: no model of it is evaluated or saved) and stop."""
    stop = _diverged(run.cfg, result.epoch - 1, run.state, bad_batches, n_batches, bad_weights, run.dist)
    log = run.log
    run.dist.main_only(lambda: (log.metrics({"epoch": result.epoch, "lr": result.lr, "eps": result.eps,
                                             "train_loss": result.loss, "train_acc": result.acc,
                                             "val_clean_acc": None, "val_robust_acc": None, "non_finite": True}),
                                log.note(f"error: {stop}")))
    raise stop


def _end_epoch(run: Run, result: EpochResult) -> None:
    """After an epoch's training: validation -> the collapse check (and --guard's recovery, engine/guard.py) ->
    best-checkpoint selection -> the epoch's record and checkpoints."""
    val = _validate(run)
    record = _epoch_record(run, result, val)
    run.state["epoch"] = result.epoch
    # a collapse means something only for a method trained against attacks (natural training selects by clean)
    # FGSM against PGD means something once the model has been trained up to the radius it is validated at: from
    # the epoch that ends at full eps (the last warm-up epoch; MNIST FGSM-RS had overfit there already on 3 seeds)
    fgsm = val.get("fgsm_acc") if result.epoch >= run.cfg.eps_warmup else None
    robust = val["robust_acc"] if val["n"] else None
    judged = run.method_cls.selects_by == "robust"
    collapse = judged and run.guard.observe(result.epoch, robust, fgsm, val["clean_acc"] if val["n"] else None)
    event = None
    if collapse:
        event = run.guard.recover(result.epoch, robust, run.raw_model, run.opt, run.scaler, run.method)
        run.log.info(f"catastrophic overfitting in epoch {result.epoch}: validation {run.guard.reason}"
                     + _guard_note(event))
    elif judged and run.guard.still_weak(result.epoch, robust, fgsm):
        event = run.guard.reinforce(result.epoch, robust, fgsm, run.method)
        run.log.info(f"validation FGSM accuracy {_pct(fgsm)} is still {100 * (fgsm - robust):.1f} points above PGD "
                     f"({_pct(robust)}) in epoch {result.epoch}, after the guard's last event and an epoch to "
                     f"adapt: the attack is still too weak; guard: {event['change']}")
    if event:
        record["guard"] = event
    # a marked epoch leaves best-checkpoint selection only when --guard acted on it (restored or changed the attack)
    improved = not (collapse and run.guard.enabled) and _select_best(run, val, result.epoch)
    if improved:
        run.guard.remember(result.epoch, robust, run.raw_model, run.opt, run.scaler, run.method)
    _save_checkpoints(run, record, improved)


def _validate(run: Run) -> dict:
    """Clean and PGD (CW loss, --val-steps) accuracy on the validation split, shared out among the processes."""
    cfg = run.cfg
    common = dict(seed=cfg.seed, eps=cfg.eps, norm=cfg.norm, batch_size=cfg.eval_batch_size, device=run.device)
    val = evaluate_sharded(run.raw_model, run.prep.val, run.dist, tag="val", steps=cfg.val_steps,
                           alpha=run.val_alpha, loss="cw", **common)
    # FGSM (one step of eps from x): far above PGD is the signature of catastrophic overfitting (engine/guard.py)
    fgsm = evaluate_sharded(run.raw_model, run.prep.val, run.dist, tag="val-fgsm", steps=1, alpha=cfg.eps,
                            loss="ce", random_start=False, **common)
    return {**val, "fgsm_acc": fgsm["robust_acc"]}


def _epoch_record(run: Run, result: EpochResult, val: dict) -> dict:
    """The epoch's line of metrics.jsonl."""
    state = run.state
    return {
        "epoch": result.epoch, "lr": result.lr, "eps": result.eps,
        "train_loss": result.loss, "train_acc": result.acc,
        "val_clean_acc": val["clean_acc"], "val_robust_acc": val["robust_acc"],
        "val_fgsm_acc": val.get("fgsm_acc"), "epoch_passes": result.passes, "passes": state["passes"],
        "epoch_seconds": result.seconds, "train_seconds": state["train_seconds"],
        "epoch_cpu_seconds": result.cpu_seconds, "train_cpu_seconds": state["train_cpu_seconds"],
        **run.method.state(),
    }


def _select_best(run: Run, val: dict, epoch: int) -> bool:
    """Whether the model after ``epoch`` is the best so far (then recorded in the run's state).

    Best = highest validation robust accuracy, ties broken by clean accuracy, or the other way round
    for a method that selects by clean accuracy (natural training); no validation split: the last epoch."""
    state = run.state
    score = [val["robust_acc"], val["clean_acc"]] if val["n"] else [0.0, 0.0]
    if run.method_cls.selects_by == "clean":
        score.reverse()
    improved = val["n"] == 0 or score > state["best_score"]
    if improved:
        state["best_score"], state["best_epoch"] = score, epoch
    return improved


def _save_checkpoints(run: Run, record: dict, improved: bool) -> None:
    """Write the epoch's record and log line, last.pt (everything to resume exactly) and, if ``improved``,
    best.pt (the model only); the main process writes, every process takes part."""
    dist, device, folder, log = run.dist, run.device, run.folder, run.log
    # every process's random state and method state (e.g. a carried perturbation), for an exact resume
    ranks = dist.gather_objects({"rng": _rng_state(device), "method": run.method.state_dict()}) if dist.enabled else None
    state = run.state

    def save() -> None:
        log.metrics(record)
        log.info(_epoch_line(record, run.cfg.epochs))
        payload = {"model_spec": run.spec, "model": run.raw_model.state_dict(), "config": run.cfg.to_dict(),
                   "epoch": state["epoch"], "version": __version__}
        # last.pt first: a process killed while writing best.pt leaves a resumable folder, and
        # resuming rewrites best.pt from last.pt when it is the best (see _restore_best)
        extra = {"ranks": ranks, "world_size": dist.world_size} if ranks else {}
        save_checkpoint(folder.last, {**payload, "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
                                      "method": run.method.state_dict(), "state": dict(state),
                                      "rng": _rng_state(device), "guard": run.guard.state_dict(), **extra})
        log.checkpoint(folder.last)
        if improved:
            save_checkpoint(folder.best, payload)
            log.checkpoint(folder.best)

    dist.main_only(save)


def _finish(run: Run) -> dict:
    """Evaluate the best checkpoint on the test split (shared out among the processes), write summary.json
    and return the summary (on every process)."""
    cfg, dist, device, folder, log, state, info = run.cfg, run.dist, run.device, run.folder, run.log, run.state, run.prep.info
    raw_model = run.raw_model
    # read by the main process, sent to the others
    dist.main_only(lambda: raw_model.load_state_dict(load_checkpoint(folder.best)["model"]))
    dist.broadcast_module(raw_model)
    test_alpha = recipe_step(cfg.eps, cfg.test_steps, recipe_ratio(cfg.norm, info))
    test = evaluate_sharded(raw_model, run.prep.test, dist, seed=cfg.seed, tag="test", eps=cfg.eps, steps=cfg.test_steps,
                            alpha=test_alpha, loss="ce", norm=cfg.norm, batch_size=cfg.eval_batch_size, device=device)

    def finish() -> dict:
        records = _read_metrics(folder.path)
        best_rec = next((r for r in records if r["epoch"] == state["best_epoch"]), {})
        summary = {
            "method": cfg.method, "dataset": cfg.dataset, "model": cfg.model, "epochs": cfg.epochs,
            "eps": cfg.eps, "alpha": cfg.alpha, "method_params": cfg.method_params, "seed": cfg.seed,
            "passes_per_example": state["passes"], "train_seconds": state["train_seconds"],
            "train_cpu_seconds": state["train_cpu_seconds"], "torch_threads": torch.get_num_threads(),
            "best_epoch": state["best_epoch"],
            "val_clean_acc": best_rec.get("val_clean_acc"), "val_robust_acc": best_rec.get("val_robust_acc"),
            "last_val_robust_acc": records[-1].get("val_robust_acc"),
            "test_clean_acc": test["clean_acc"], "test_robust_acc": test["robust_acc"],
            "norm": cfg.norm,
            "collapsed": run.guard.collapsed_epoch is not None, "collapsed_epoch": run.guard.collapsed_epoch,
            "guard": cfg.guard, "guard_events": run.guard.events,
            "test_attack": f"PGD-{cfg.test_steps} CE, {'L2' if cfg.norm == 'l2' else 'L-inf'} eps {cfg.eps:.4g}, "
                           f"alpha {test_alpha:.4g}, 1 restart",
            "test_examples": test["n"], "train_examples": len(run.prep.train), "val_examples": len(run.prep.val),
            "data_warnings": list(run.prep.warnings), "eps_warmup": cfg.eps_warmup,
            "device": str(device), "world_size": dist.world_size,
            "torch_version": torch.__version__, "fastrobust_version": __version__,
        }
        # a model at chance level learnt nothing: said in summary.json and in the last line, not "done"
        judged = (test["clean_acc"], run.prep.test, "test") if test["n"] else \
            (best_rec.get("val_clean_acc"), run.prep.val, "validation")
        reason = learning_verdict(judged[0], judged[1].y, info.num_classes, f"clean {judged[2]} accuracy")
        summary.update(learned=None if judged[0] is None else reason is None, not_learned=reason)
        atomic_write_text(folder.summary, json.dumps(finite_json(summary), indent=2, allow_nan=False) + "\n")
        figures = (f"best epoch {summary['best_epoch']}, test clean {_pct(test['clean_acc'])}, "
                   f"test PGD-{cfg.test_steps} {_pct(test['robust_acc'])}, {state['passes']:.1f} passes/example, "
                   f"{state['train_seconds']:.1f} s training -> {folder.summary}")
        hint = _NOT_LEARNED_HINT.format(warmup=f"{cfg.eps_warmup:g}", longer=f"{max(1.0, 2 * cfg.eps_warmup):g}")
        log.info(f"done: {figures}" if reason is None else
                 f"warning: the model did not learn: {reason}; {hint} ({figures})")
        _callbacks.call(log.callbacks, "on_train_end", summary)
        return summary

    return dist.on_main(finish)


_NOT_LEARNED_HINT = ("train longer, ramp eps up over more epochs (--eps-warmup {longer}; this run: {warmup}), or "
                     "lower --eps or --lr; summary.json records learned: false")


class TrainingDiverged(FastrobustError):
    """The loss or the weights became NaN or infinite; training stopped before saving them."""


def _non_finite_tensors(model: torch.nn.Module) -> torch.Tensor:
    """How many floating-point parameters and buffers hold a NaN or inf (a 0-d tensor on their device)."""
    flags = [~torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return torch.stack(flags).sum() if flags else torch.zeros(())


def _diverged(cfg: TrainConfig, epoch: int, state: dict, bad_batches: int, n_batches: int, bad_weights: bool,
              dist: Dist) -> TrainingDiverged:
    if bad_batches:
        what = f"the training loss was NaN or infinite in {bad_batches} of {n_batches} minibatches"
        what += " and the weights are no longer finite" if bad_weights else ""
    elif bad_weights:
        what = "the weights became NaN or infinite"
    else:
        what = "the training loss was NaN or infinite"
    kept = (f"last.pt and best.pt keep epoch {state['epoch']} and earlier, which were finite" if state["epoch"]
            else "no checkpoint was written")
    clip = f"a lower --grad-clip (now {cfg.grad_clip:g})" if cfg.grad_clip else "--grad-clip 1.0"
    error = TrainingDiverged(
        f"training stopped in epoch {epoch + 1}: {what}. The learning rate is probably too high for this setting "
        f"(--lr {cfg.lr:g}, {cfg.optimizer}): start again with another --out and a lower --lr, or with {clip}. "
        f"Nothing of epoch {epoch + 1} was saved; {kept}.")
    error.quiet = not dist.is_main   # every process stops; the main one shows the message
    return error


def _restore_best(out: Path, ckpt: dict, spec: dict) -> None:
    """On resume: if the process was killed while writing best.pt, last.pt (written first) holds it."""
    state = ckpt["state"]
    if state.get("best_epoch") != state.get("epoch"):
        return
    path = RunFolder(out).best
    try:
        current = load_checkpoint(path)["epoch"] if path.is_file() else None
    except FastrobustError:
        current = None
    if current != state["epoch"]:
        save_checkpoint(path, {"model_spec": spec, "model": ckpt["model"], "config": ckpt["config"],
                               "epoch": ckpt["epoch"], "version": ckpt.get("version", __version__)})


def _reduce_seconds(dist: Dist, wall: float, cpu: float) -> tuple[float, float]:
    """The epoch's wall seconds (the slowest process) and CPU seconds (summed over the processes)."""
    if not dist.enabled:
        return wall, cpu
    wall = dist.all_reduce_max(torch.tensor([wall], dtype=torch.float64, device=dist.device)).item()
    cpu = dist.all_reduce_sum(torch.tensor([cpu], dtype=torch.float64, device=dist.device)).item()
    return wall, cpu


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _guard_note(event: dict | None) -> str:
    """The end of a collapse's train.log line: what --guard did, or a hint when it is off."""
    if event is None:
        return ("; marked only, the epoch stays a candidate for the best checkpoint (--guard restores the best "
                "state and strengthens the attack)")
    if event["restored_epoch"]:
        done = f"restored epoch {event['restored_epoch']}'s state"
    elif kept := event.get("not_restored"):
        done = f"kept this state (epoch {kept['epoch']}'s, {_pct(kept['val_robust_acc'])} robust, is clearly below it)"
    else:
        done = "no earlier state to restore"
    return f"; guard: {done}, {event['change']}"


def _epoch_line(r: dict, epochs: int) -> str:
    extra = "".join(f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}"
                    for k, v in r.items() if k not in _CORE_KEYS)
    return (f"epoch {r['epoch']}/{epochs}: loss {r['train_loss']:.4f} acc {_pct(r['train_acc'])} | "
            f"val clean {_pct(r['val_clean_acc'])} robust {_pct(r['val_robust_acc'])} | "
            f"{r['passes']:.1f} passes/ex, {r['epoch_seconds']:.1f} s (lr {r['lr']:.3g}, eps {r['eps']:.3g}){extra}")


_CORE_KEYS = {"epoch", "lr", "eps", "train_loss", "train_acc", "val_clean_acc", "val_robust_acc",
              "epoch_passes", "passes", "epoch_seconds", "train_seconds",
              "epoch_cpu_seconds", "train_cpu_seconds", "guard", "val_fgsm_acc"}


def _read_metrics(out: Path) -> list[dict]:
    path = RunFolder(out).metrics
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


# keys that may differ when resuming (they do not change the result)
_RESUME_FREE = {"out", "device", "data_dir", "dist_timeout", "log", "workers"}


def _merge_for_resume(cfg: TrainConfig, out: Path, given: set[str] | None = None) -> TrainConfig:
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
        if key in _RESUME_FREE or not explicit(key) or _same(key, value, getattr(saved, key)):
            continue
        if key == "method_params" and isinstance(value, dict) and \
                all(saved.method_params.get(k.replace("-", "_")) == v for k, v in value.items()):
            continue   # a partial set of parameters that agrees with the saved (resolved) ones
        raise ConfigError(f"--resume: {key} was {getattr(saved, key)!r} when the run started, now {value!r}; "
                          f"a resumed run keeps its configuration (drop that option, or start a new run with "
                          f"another --out to change it)")
    for key in _RESUME_FREE:
        if explicit(key):
            setattr(saved, key, values[key])
    return saved


def _same(key: str, value, saved) -> bool:
    """A given value equals the saved (resolved) one, up to spelling (``piecewise`` = ``multistep``, ``8/255``)."""
    from ..config import parse_number

    def norm(v):
        if key == "lr_schedule" and v == "piecewise":
            return "multistep"
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, str) and key in ("eps", "alpha", "lr"):
            try:
                return parse_number(v, key)
            except ConfigError:
                return v
        return v
    return norm(value) == norm(saved)
