"""The epoch and minibatch loop: what a job holds while it runs (:class:`Run`, its counters :class:`RunState`),
each minibatch through ``method.train_batch`` with the :class:`Stepper`, the epoch's sums reduced over the
processes, and the stop on a NaN or infinite loss or weight."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import FastrobustError
from ..methods import Batch, Method, StepOutput
from ..runfolder import RunFolder
from ..timing import sync
from .averaging import WeightAverage
from .distributed import Dist, shard_weight
from .guard import Guard
from .prepare import Prepared
from .rundir import RunLog
from .schedules import LRSchedule, eps_scale


class Stepper:
    """The ``step(loss, wrt=None)`` that methods call: one optimizer step on ``loss`` (returning the gradient
    with respect to ``wrt`` when given, for methods that reuse it).

    :attr:`weight` scales the loss: each process backpropagates its shard's mean loss times it, so that DDP's
    average of the processes' gradients is the gradient of the global minibatch's mean loss (1 when the
    shards are equal, i.e. for every minibatch but perhaps the last of an epoch)."""

    def __init__(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list,
                 raw_model: torch.nn.Module, dist: Dist, grad_clip: float | None = None) -> None:
        self.opt, self.scaler, self.params, self.raw_model = opt, scaler, params, raw_model
        self.dist, self.grad_clip = dist, grad_clip
        self.weight = 1.0
        self.averager: WeightAverage | None = None   # --wa: updated after every step

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def __call__(self, loss: torch.Tensor, wrt: torch.Tensor | None = None) -> torch.Tensor | None:
        opt, scaler, dist = self.opt, self.scaler, self.dist
        opt.zero_grad(set_to_none=True)
        if wrt is not None:
            wrt.grad = None
        if self.weight != 1.0:
            loss = loss * self.weight
        scaler.scale(loss).backward()
        grad = None
        if wrt is not None:
            grad = wrt.grad.detach()
            if scaler.is_enabled():   # the scale as a device tensor: no host read (get_scale() would sync)
                grad = grad / scaler._get_scale_async()
            if dist.enabled:   # the gradient of the global minibatch's mean loss, as with one process
                grad = grad / dist.world_size
        if self.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        scaler.step(opt)
        scaler.update()
        dist.average_buffers(self.raw_model)
        if self.averager is not None:   # identical weights on every process: identical averages
            self.averager.update(self.raw_model)
        return grad


@dataclass
class RunState:
    """The run's counters, saved in last.pt (as a dict: :meth:`to_dict`) so that a resumed run continues them."""

    epoch: int = 0                 # epochs done
    passes: float = 0.0            # forward-backward passes per training example so far
    train_seconds: float = 0.0     # wall seconds of training so far (the slowest process)
    train_cpu_seconds: float = 0.0  # CPU seconds of training so far (summed over the processes)
    best_score: list = field(default_factory=lambda: [-1.0, -1.0])   # the checkpoint selection's score of best.pt
    best_epoch: int = 0            # the epoch best.pt holds
    best_weights: str = "raw"      # which weights best.pt holds: "raw", or "averaged" (--wa)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "RunState":
        """A saved state (a checkpoint older than ``train_cpu_seconds`` lacks it: 0)."""
        return cls(**{"train_cpu_seconds": 0.0, **saved})


@dataclass
class Run:
    """What one training job holds while it runs (built by ``trainer._setup_run``; see :func:`train_epoch`)."""

    cfg: TrainConfig
    prep: Prepared
    folder: RunFolder
    dist: Dist
    device: torch.device
    log: RunLog
    progress: bool | None
    loader: object                 # iterates this process's (x, y, index) minibatches (or (x, y): index None);
                                   # set_epoch(e) selects the epoch
    spec: dict                     # how to rebuild the model (saved in every checkpoint)
    raw_model: torch.nn.Module     # the model itself (its state_dict is what checkpoints hold)
    model: torch.nn.Module         # what the method trains: raw_model, or its DDP / compiled wrapper
    stepper: Stepper               # the optimizer, the loss scaler and the weight step that methods call
    schedule: LRSchedule
    method: Method
    autocast: Callable
    sizes: list[int]               # the global minibatch sizes of an epoch
    val_alpha: float
    guard: Guard                   # the collapse mark, and --guard's recovery
    state: RunState = field(default_factory=RunState)

    @property
    def out(self) -> Path:
        return self.folder.path

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.stepper.opt

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.stepper.scaler

    @property
    def averager(self) -> WeightAverage | None:
        """--wa's running average of the weights (None without it)."""
        return self.stepper.averager


@dataclass
class EpochResult:
    """One epoch's training, summed over the processes (see :func:`train_epoch`)."""

    epoch: int            # 1-based: the number of epochs done after it
    lr: float             # of the epoch's last minibatch
    eps: float            # of the epoch's last minibatch (after warm-up)
    loss: float           # mean training loss
    acc: float            # training accuracy (on the method's training logits)
    passes: float         # forward-backward passes per training example
    seconds: float        # wall seconds (of the slowest process)
    cpu_seconds: float    # CPU seconds (summed over the processes)


# the per-epoch sums of train_epoch (float64, on the device): loss*n, correct, n, passes,
# minibatches with a non-finite loss, non-finite weights
_LOSS, _CORRECT, _SEEN, _PASSES, _BAD_BATCHES, _BAD_WEIGHTS = range(6)


def _train_batch(run: Run, epoch: int, i: int, x: torch.Tensor, y: torch.Tensor,
                totals: torch.Tensor, index: torch.Tensor | None = None) -> tuple[float, float, StepOutput]:
    """The method's work on minibatch ``i`` of ``epoch`` (``index``: its examples' training-split rows, on the
    device) at its learning rate and eps; adds its loss, correct
    predictions and non-finite flag to ``totals`` in place on the device (no host sync).
    Returns (lr, eps scale, the method's output)."""
    cfg = run.cfg
    run.stepper.weight = shard_weight(len(y), run.sizes[i], run.dist.world_size)
    t = epoch + i / len(run.loader)
    lr = run.schedule(t)
    run.stepper.set_lr(lr)
    scale = eps_scale(t, cfg.eps_warmup)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with run.autocast():
        out_b = run.method.train_batch(run.model, Batch(x, y, cfg.eps * scale, cfg.alpha * scale, index), run.stepper)
    loss_b = out_b.loss.detach()
    totals[_LOSS].add_(loss_b, alpha=len(y))
    totals[_CORRECT].add_((out_b.logits.argmax(1) == y).sum())
    totals[_BAD_BATCHES].add_(~torch.isfinite(loss_b).all())   # the on-device NaN/inf flag, read once per epoch
    return lr, scale, out_b


def train_epoch(run: Run, epoch: int) -> EpochResult:
    """Train one epoch (every process its shard of each global minibatch), add its passes and seconds to
    the run's totals, and return its result; a NaN or infinite loss or weight raises :class:`TrainingDiverged`."""
    dist, device, loader = run.dist, run.device, run.loader
    loader.set_epoch(epoch)
    run.model.train()
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    seen_n, passes_n = 0, 0.0
    lr = scale = None
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}/{run.cfg.epochs}", leave=False,
               disable=True if not dist.is_main else (None if run.progress is None else not run.progress))
    for i, (x, y, *index) in enumerate(bar):
        if run.sizes[i] < dist.world_size:
            continue   # some process would get no example (the same on every process)
        lr, scale, out_b = _train_batch(run, epoch, i, x, y, totals, index[0] if index else None)
        seen_n += len(y)
        passes_n += out_b.passes
        if i % 10 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{out_b.loss.item():.3f}", lr=f"{lr:.3g}")
    run.method.on_epoch_end(epoch)
    sync(device)
    # CPU seconds of this process (all its threads): unlike wall time, barely moved by other
    # processes sharing the machine; equals wall time x threads when the threads are busy.
    # Over several processes: wall seconds of the slowest, CPU seconds summed.
    seconds = _reduce_seconds(dist, time.perf_counter() - start, time.process_time() - cpu_start)
    totals[_SEEN], totals[_PASSES] = seen_n, passes_n
    totals[_BAD_WEIGHTS] = _non_finite_tensors(run.raw_model)   # checked before any checkpoint is written
    return _close_epoch(run, epoch, dist.all_reduce_sum(totals).tolist(), lr, scale, seconds)


def _close_epoch(run: Run, epoch: int, sums: list, lr: float, scale: float,
                 seconds: tuple[float, float]) -> EpochResult:
    """The epoch's result from its reduced sums; adds its passes and seconds to the run's state (or stops it)."""
    loss_sum, correct, seen, passes, bad_batches, bad_weights = sums
    result = EpochResult(epoch + 1, lr, run.cfg.eps * scale, loss_sum / seen, correct / seen,
                         passes / len(run.prep.train), *seconds)
    if bad_batches or bad_weights or not math.isfinite(loss_sum):
        _stop_diverged(run, result, int(bad_batches), len(run.loader), bool(bad_weights))
    state = run.state
    state.passes += result.passes
    state.train_seconds += result.seconds
    state.train_cpu_seconds += result.cpu_seconds
    return result


class TrainingDiverged(FastrobustError):
    """The loss or the weights became NaN or infinite; training stopped before saving them."""


def _stop_diverged(run: Run, result: EpochResult, bad_batches: int, n_batches: int, bad_weights: bool) -> None:
    """Log the diverged epoch's record (without accuracies: no model of it is evaluated or saved) and stop."""
    stop = _diverged(run, result.epoch - 1, bad_batches, n_batches, bad_weights)
    log = run.log
    run.dist.main_only(lambda: (log.metrics({"epoch": result.epoch, "lr": result.lr, "eps": result.eps,
                                             "train_loss": result.loss, "train_acc": result.acc,
                                             "val_clean_acc": None, "val_robust_acc": None, "non_finite": True}),
                                log.note(f"error: {stop}")))
    raise stop


def _diverged(run: Run, epoch: int, bad_batches: int, n_batches: int, bad_weights: bool) -> TrainingDiverged:
    cfg, done = run.cfg, run.state.epoch
    if bad_batches:
        what = f"the training loss was NaN or infinite in {bad_batches} of {n_batches} minibatches"
        what += " and the weights are no longer finite" if bad_weights else ""
    elif bad_weights:
        what = "the weights became NaN or infinite"
    else:
        what = "the training loss was NaN or infinite"
    kept = (f"last.pt and best.pt keep epoch {done} and earlier, which were finite" if done
            else "no checkpoint was written")
    clip = f"a lower --grad-clip (now {cfg.grad_clip:g})" if cfg.grad_clip else "--grad-clip 1.0"
    error = TrainingDiverged(
        f"training stopped in epoch {epoch + 1}: {what}. The learning rate is probably too high for this setting "
        f"(--lr {cfg.lr:g}, {cfg.optimizer}): start again with another --out and a lower --lr, or with {clip}. "
        f"Nothing of epoch {epoch + 1} was saved; {kept}.")
    error.quiet = not run.dist.is_main   # every process stops; the main one shows the message
    return error


def _non_finite_tensors(model: torch.nn.Module) -> torch.Tensor:
    """How many floating-point parameters and buffers hold a NaN or inf (a 0-d tensor on their device)."""
    flags = [~torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return torch.stack(flags).sum() if flags else torch.zeros(())


def _reduce_seconds(dist: Dist, wall: float, cpu: float) -> tuple[float, float]:
    """The epoch's wall seconds (the slowest process) and CPU seconds (summed over the processes)."""
    if not dist.enabled:
        return wall, cpu
    wall = dist.all_reduce_max(torch.tensor([wall], dtype=torch.float64, device=dist.device)).item()
    cpu = dist.all_reduce_sum(torch.tensor([cpu], dtype=torch.float64, device=dist.device)).item()
    return wall, cpu
