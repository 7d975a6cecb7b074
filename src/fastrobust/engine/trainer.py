"""The training job shared by every method, from its configuration to its summary.

The engine owns the optimizer, the LR and eps schedules, epochs, evaluation
on the validation split, checkpoints, logging, timing and cost accounting.
It never knows which method runs: it hands each minibatch to
``method.train_batch`` with a ``step`` function and adds up what the method
reports. A run, in order: :func:`_setup_run` (data, folder, model, optimizer, method, resume), then per
epoch :func:`.loop.train_epoch` and :func:`_end_epoch` (validation -> the collapse guard -> best selection ->
checkpoints), then :func:`_finish` (test evaluation of the best checkpoint, summary.json).
The parts: :mod:`.prepare` (configuration and data), :mod:`.loop` (the epochs), :mod:`.rundir` (the run
folder's files), :mod:`.guard`, :mod:`.checkpoint`, :mod:`.distributed`.
"""

from __future__ import annotations

import contextlib
import gc
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..attacks import threat_model
from ..config import TrainConfig, recipe_ratio, recipe_step, save_yaml
from ..data import Data
from ..data.core import learning_verdict
from ..errors import FastrobustError
from ..methods import MethodContext, get_method
from ..runfolder import RunFolder
from . import callbacks as _callbacks
from .averaging import WeightAverage
from .checkpoint import build_model, load_checkpoint, model_spec
from .compile import compile_model
from .device import pick_device
from .hardware import optimizer_options, peak_memory
from .distributed import Dist, env_world_size, global_batch_sizes, init_from_env, peer_lost
from .guard import Guard, guard_note
from .loop import EpochResult, Run, Stepper, train_epoch
from .persist import restore, save_epoch
from .prepare import make_loader, prepare_for
from .rundir import NOT_LEARNED_HINT, FolderClaim, RunLog, finished_summary, pct, read_metrics, resume_config
from .schedules import LRSchedule
from .selection import select_best
from .validation import evaluate_sharded

__all__ = ["train"]


@dataclass
class Job:
    """What one call of :func:`train` asked for."""

    cfg: TrainConfig
    out: Path | None
    resume: bool
    progress: bool | None
    echo: Callable[[str], None]
    callbacks: list
    model: torch.nn.Module | None = None   # fit's network (cfg.model names it for other processes)
    data: Data | None = None               # fit's data (cfg.dataset names it)
    claim: FolderClaim = field(default_factory=FolderClaim)   # the run folder's lock, held by the main process


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None,
          echo: Callable[[str], None] = print, given: set[str] | None = None, callbacks=(),
          trust_code: bool = False, model: torch.nn.Module | None = None, data: Data | None = None) -> dict:
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
    A NaN or infinite loss or weight stops training with a :class:`.loop.TrainingDiverged`.
    ``model`` and ``data`` (``fit``): the network and the data themselves, which ``cfg.model`` and
    ``cfg.dataset`` name for other processes.
    """
    # work that reads files or picks the device comes before the process group exists;
    # an error there is raised after joining it, so that it shows once and no process waits
    setup_error, device, out = None, torch.device("cpu"), None
    supplied = tuple(ref for ref, obj in ((cfg.model, model), (cfg.dataset, data)) if obj is not None)
    try:
        cfg, out = resume_config(cfg, resume, given, trust_code, supplied)
        if resume and RunFolder(out).summary.is_file():
            return finished_summary(out, echo)
        device = pick_device(cfg.device)
    except FastrobustError as exc:
        if env_world_size() <= 1:
            raise
        setup_error = exc
    dist, device = init_from_env(device, cfg.dist_timeout)
    failed, claim = True, FolderClaim()
    try:
        dist.agree(lambda: _raise(setup_error))
        job = Job(cfg, out, resume, progress, echo, _callbacks.check_callbacks(callbacks), model, data, claim)
        summary = _train(job, dist, device)
        failed = False
        return summary
    except BaseException as exc:
        if dist.enabled:   # the frames of the traceback hold the DDP model: let it go (see below)
            traceback.clear_frames(exc.__traceback__)
            lost = peer_lost(exc, dist, cfg.dist_timeout)
            if lost is not None:
                raise lost from None
        raise
    finally:
        if dist.enabled:
            # The DDP model holds the process group: free it (its reference cycles too) before leaving the
            # group, so that Gloo's threads stop while Python is fully alive, not at interpreter exit (SIGABRT)
            gc.collect()
        claim.release()
        dist.shutdown(failed)


def _raise(error: BaseException | None) -> None:
    if error is not None:
        raise error


def _train(job: Job, dist: Dist, device: torch.device) -> dict:
    run = _setup_run(job, dist, device)
    for epoch in range(run.state.epoch, run.cfg.epochs):
        result = train_epoch(run, epoch)
        _end_epoch(run, result)
    return _finish(run)


# ---- setting a run up ---------------------------------------------------------------------------------------

def _setup_run(job: Job, dist: Dist, device: torch.device) -> Run:
    """Load the data, claim and lock the run folder, build the model, optimizer and method, and restore
    them from last.pt when resuming; returns the :class:`.loop.Run`."""
    prep = dist.local_main_first(lambda: prepare_for(job.cfg, dist, device, job.model, job.data))
    cfg = prep.cfg
    out, notes = dist.on_main(lambda: job.claim.take(cfg, job.out, job.resume))
    folder = RunFolder(out)
    cfg.out = str(out)
    # resuming a folder that holds no checkpoint yet (stopped in its first epoch): start from epoch 0
    resume = job.resume and dist.on_main(lambda: folder.last.is_file())
    dist.main_only(lambda: save_yaml(cfg, folder.config))
    log = RunLog(out, dist.is_main, job.echo, _callbacks.build(cfg.log, out, job.callbacks) if dist.is_main else ())
    for line in notes + prep.notes + [f"warning: {w}" for w in prep.warnings]:
        log.info(line)
    torch.manual_seed(cfg.seed + dist.rank)
    run = _build_run(prep, folder, log, dist, device, job)
    if resume:
        restore(run)
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


def _build_run(prep, folder: RunFolder, log: RunLog, dist: Dist, device: torch.device, job: Job) -> Run:
    """The loader, model, optimizer, loss scaler, LR schedule and method of a run, on ``device``."""
    cfg, info = prep.cfg, prep.info
    loader = make_loader(prep, dist, device)
    spec = model_spec(cfg.model, info, cfg.model_options, cfg.normalize)
    model = build_model(spec, job.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw_model, model = dist.wrap(model, device, sync_bn=cfg.sync_bn)
    if cfg.compile:
        model = compile_model(model)   # one graph per shape; attacks without weight gradients
    params = [p for p in raw_model.parameters() if p.requires_grad]
    fused = optimizer_options(cfg, device)   # fp16 on CUDA: the loss scaler's inf check stays on the device
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    method = get_method(cfg.method)(
        MethodContext(num_classes=info.num_classes, input_std=raw_model.input_std.to(device), epochs=cfg.epochs,
                      batches_per_epoch=len(loader), all_reduce_sum=dist.all_reduce_sum,
                      threat=threat_model(cfg.norm), eps=cfg.eps, alpha=cfg.alpha, eps_warmup=cfg.eps_warmup,
                      label_smoothing=cfg.label_smoothing, examples=len(prep.train)),
        **cfg.method_params,
    )
    stepper = Stepper(opt, scaler, params, raw_model, dist, cfg.grad_clip)
    if cfg.wa is not None:
        stepper.averager = WeightAverage(raw_model, cfg.wa, cfg.wa_warmup)
    return Run(cfg=cfg, prep=prep, folder=folder, dist=dist, device=device, log=log, progress=job.progress,
               loader=loader, spec=spec, raw_model=raw_model, model=model,
               stepper=stepper,
               schedule=LRSchedule.from_config(cfg), method=method,
               autocast=(lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext,
               sizes=global_batch_sizes(len(prep.train), cfg.batch_size),
               val_alpha=recipe_step(cfg.eps, cfg.val_steps, recipe_ratio(cfg.norm, info)), guard=Guard(cfg.guard, cfg.guard_passes))


# ---- after each epoch ---------------------------------------------------------------------------------------

def _end_epoch(run: Run, result: EpochResult) -> None:
    """After an epoch's training: validation -> the collapse check (and --guard's recovery, engine/guard.py) ->
    best-checkpoint selection -> the epoch's record and checkpoints."""
    val = _validate(run)
    record = _epoch_record(run, result, val)
    run.state.epoch = result.epoch
    # a collapse means something only for a method trained against attacks (natural training selects by clean);
    # FGSM against PGD is judged from the epoch that ends at full eps (see Guard.observe)
    fgsm = val.get("fgsm_acc") if result.epoch >= run.cfg.eps_warmup else None
    robust = val["robust_acc"] if val["n"] else None
    judged = run.method.selects_by == "robust"
    collapse = judged and run.guard.observe(result.epoch, robust, fgsm, val["clean_acc"] if val["n"] else None,
                                            passes=record["epoch_passes"])
    event = None
    if collapse:
        event = run.guard.recover(result.epoch, robust, run.raw_model, run.opt, run.scaler, run.method)
        run.log.info(f"catastrophic overfitting in epoch {result.epoch}: validation {run.guard.reason}"
                     + guard_note(event))
    elif judged and run.guard.still_weak(result.epoch, robust, fgsm):
        event = run.guard.reinforce(result.epoch, robust, fgsm, run.method)
        run.log.info(f"validation FGSM accuracy {pct(fgsm)} is still {100 * (fgsm - robust):.1f} points above PGD "
                     f"({pct(robust)}) in epoch {result.epoch}, after the guard's last event and an epoch to "
                     f"adapt: the attack is still too weak; guard: {event['change']}")
    if event:
        record["guard"] = event
    # a marked epoch leaves best-checkpoint selection only when --guard acted on it (restored or changed the attack)
    improved = not (collapse and run.guard.enabled) and select_best(run.state, val, result.epoch, run.method.selects_by, run.averager is not None)
    if improved:
        run.guard.remember(result.epoch, robust, run.raw_model, run.opt, run.scaler, run.method)
    save_epoch(run, record, improved)


def _validate(run: Run) -> dict:
    """Clean and PGD (CW loss, --val-steps) accuracy on the validation split, shared out among the processes."""
    cfg = run.cfg
    common = dict(seed=cfg.seed, eps=cfg.eps, norm=cfg.norm, batch_size=cfg.eval_batch_size, device=run.device)
    val = evaluate_sharded(run.raw_model, run.prep.val, run.dist, tag="val", steps=cfg.val_steps,
                           alpha=run.val_alpha, loss="cw", **common)
    # FGSM (one step of eps from x): far above PGD is the signature of catastrophic overfitting (engine/guard.py)
    fgsm = evaluate_sharded(run.raw_model, run.prep.val, run.dist, tag="val-fgsm", steps=1, alpha=cfg.eps,
                            loss="ce", random_start=False, **common)
    val = {**val, "fgsm_acc": fgsm["robust_acc"]}
    if run.averager is not None:   # --wa: the averaged weights, validated the same way
        with run.averager.swapped_into(run.raw_model):
            wa = evaluate_sharded(run.raw_model, run.prep.val, run.dist, tag="val-wa", steps=cfg.val_steps,
                                  alpha=run.val_alpha, loss="cw", **common)
        val.update(wa_clean_acc=wa["clean_acc"], wa_robust_acc=wa["robust_acc"])
    return val


def _epoch_record(run: Run, result: EpochResult, val: dict) -> dict:
    """The epoch's line of metrics.jsonl."""
    state = run.state
    return {
        "epoch": result.epoch, "lr": result.lr, "eps": result.eps,
        "train_loss": result.loss, "train_acc": result.acc,
        "val_clean_acc": val["clean_acc"], "val_robust_acc": val["robust_acc"],
        "val_fgsm_acc": val.get("fgsm_acc"), "epoch_passes": result.passes, "passes": state.passes,
        **({"val_wa_clean_acc": val["wa_clean_acc"], "val_wa_robust_acc": val["wa_robust_acc"]}
           if "wa_robust_acc" in val else {}),
        "epoch_seconds": result.seconds, "train_seconds": state.train_seconds,
        "epoch_cpu_seconds": result.cpu_seconds, "train_cpu_seconds": state.train_cpu_seconds,
        **run.method.state(),
    }


# ---- the end ------------------------------------------------------------------------------------------------

def _finish(run: Run) -> dict:
    """Evaluate the best checkpoint on the test split (shared out among the processes), write summary.json
    and return the summary (on every process)."""
    cfg, dist, folder, log, state = run.cfg, run.dist, run.folder, run.log, run.state
    raw_model = run.raw_model
    # read by the main process, sent to the others
    dist.main_only(lambda: raw_model.load_state_dict(load_checkpoint(folder.best)["model"]))
    dist.broadcast_module(raw_model)
    test_alpha = recipe_step(cfg.eps, cfg.test_steps, recipe_ratio(cfg.norm, run.prep.info))
    test = evaluate_sharded(raw_model, run.prep.test, dist, seed=cfg.seed, tag="test", eps=cfg.eps,
                            steps=cfg.test_steps, alpha=test_alpha, loss="ce", norm=cfg.norm,
                            batch_size=cfg.eval_batch_size, device=run.device)

    def finish() -> dict:
        summary, reason = _summary(run, test, test_alpha)
        log.summary(summary)
        figures = (f"best epoch {summary['best_epoch']}, test clean {pct(test['clean_acc'])}, "
                   f"test PGD-{cfg.test_steps} {pct(test['robust_acc'])}, {state.passes:.1f} passes/example, "
                   f"{state.train_seconds:.1f} s training -> {folder.summary}")
        hint = NOT_LEARNED_HINT.format(warmup=f"{cfg.eps_warmup:g}", longer=f"{max(1.0, 2 * cfg.eps_warmup):g}")
        log.info(f"done: {figures}" if reason is None else
                 f"warning: the model did not learn: {reason}; {hint} ({figures})")
        log.train_end(summary)
        return summary

    return dist.on_main(finish)


def _summary(run: Run, test: dict, test_alpha: float) -> tuple[dict, str | None]:
    """summary.json's content, and why the model did not learn (None: it did)."""
    cfg, dist, state, guard, prep = run.cfg, run.dist, run.state, run.guard, run.prep
    records = read_metrics(run.out)
    best_rec = next((r for r in records if r["epoch"] == state.best_epoch), {})
    summary = {
        "method": cfg.method, "dataset": cfg.dataset, "model": cfg.model, "epochs": cfg.epochs,
        "eps": cfg.eps, "alpha": cfg.alpha, "method_params": cfg.method_params, "seed": cfg.seed,
        "passes_per_example": state.passes, "train_seconds": state.train_seconds,
        "train_cpu_seconds": state.train_cpu_seconds, "torch_threads": torch.get_num_threads(),
        "best_epoch": state.best_epoch, "wa": cfg.wa, "best_weights": state.best_weights,
        # the figures of the weights best.pt holds (--wa: raw or averaged)
        **{k: best_rec.get(("val_wa_" if state.best_weights == "averaged" else "val_") + k[4:])
           for k in ("val_clean_acc", "val_robust_acc")},
        "last_val_robust_acc": records[-1].get("val_robust_acc"),
        "test_clean_acc": test["clean_acc"], "test_robust_acc": test["robust_acc"],
        "norm": cfg.norm,
        "collapsed": guard.collapsed_epoch is not None, "collapsed_epoch": guard.collapsed_epoch,
        "guard": cfg.guard, "guard_events": guard.events,
        "test_attack": f"PGD-{cfg.test_steps} CE, {'L2' if cfg.norm == 'l2' else 'L-inf'} eps {cfg.eps:.4g}, "
                       f"alpha {test_alpha:.4g}, 1 restart",
        "test_examples": test["n"], "train_examples": len(prep.train), "val_examples": len(prep.val),
        "data_warnings": list(prep.warnings), "eps_warmup": cfg.eps_warmup,
        "device": str(run.device), "world_size": dist.world_size, **peak_memory(run.device),
        "torch_version": torch.__version__, "fastrobust_version": __version__,
    }
    # a model at chance level learnt nothing: said in summary.json and in the last line, not "done"
    judged = (test["clean_acc"], prep.test, "test") if test["n"] else \
        (best_rec.get("val_clean_acc"), prep.val, "validation")
    reason = learning_verdict(judged[0], judged[1].y, prep.info.num_classes, f"clean {judged[2]} accuracy")
    summary.update(learned=None if judged[0] is None else reason is None, not_learned=reason)
    return summary, reason
