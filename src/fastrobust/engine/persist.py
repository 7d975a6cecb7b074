"""What a run saves after each epoch (last.pt: everything to resume exactly; best.pt: the selected model)
and restores from last.pt to resume."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..errors import FastrobustError
from ..runfolder import RunFolder
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import derived_seed
from .loop import Run, RunState
from .rundir import epoch_line


def save_epoch(run: Run, record: dict, improved: bool) -> None:
    """Write the epoch's record and log line, last.pt (everything to resume exactly) and, if ``improved``,
    best.pt (the model only); the main process writes, every process takes part."""
    dist, device, folder, log = run.dist, run.device, run.folder, run.log
    # every process's random state and method state (e.g. a carried perturbation), for an exact resume
    ranks = dist.gather_objects({"rng": _rng_state(device), "method": run.method.state_dict()}) if dist.enabled else None

    def save() -> None:
        log.metrics(record)
        log.info(epoch_line(record, run.cfg.epochs))
        payload = {"model_spec": run.spec, "model": run.raw_model.state_dict(), "config": run.cfg.to_dict(),
                   "epoch": run.state.epoch, "version": __version__}
        # last.pt first: a process killed while writing best.pt leaves a resumable folder, and
        # resuming rewrites best.pt from last.pt when it is the best (see _restore_best)
        extra = {"ranks": ranks, "world_size": dist.world_size} if ranks else {}
        averaged = {"averager": run.averager.state_dict()} if run.averager is not None else {}
        save_checkpoint(folder.last, {**payload, "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
                                      "method": run.method.state_dict(), "state": run.state.to_dict(),
                                      "rng": _rng_state(device), "guard": run.guard.state_dict(), **averaged, **extra})
        log.checkpoint(folder.last)
        if improved:
            save_checkpoint(folder.best, _best_payload(payload, run.state.best_weights, averaged.get("averager")))
            log.checkpoint(folder.best)

    dist.main_only(save)


def restore(run: Run) -> None:
    """Continue from last.pt: weights, optimizer, loss scaler, method state, counters and random streams."""
    dist, device, log, out = run.dist, run.device, run.log, run.out
    ckpt = dist.agree(lambda: load_checkpoint(run.folder.last))
    run.raw_model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.state = state = RunState.from_dict(ckpt["state"])
    saved = ckpt.get("ranks") or [{"rng": ckpt["rng"], "method": ckpt["method"]}]
    mine = saved[dist.rank] if len(saved) == dist.world_size else saved[0]
    run.method.load_state_dict(mine["method"])
    run.guard.load_state_dict(ckpt.get("guard"))
    if run.averager is not None:
        run.averager.load_state_dict(ckpt["averager"])
    if len(saved) == dist.world_size or dist.is_main:
        _set_rng(mine["rng"], device)
    else:   # another number of processes than when saved: fresh streams for the other processes
        torch.manual_seed(derived_seed(run.cfg.seed, state.epoch, dist.rank))
    log.keep_metrics_before(state.epoch)
    dist.main_only(lambda: _restore_best(out, ckpt, run.spec))
    log.info(f"resuming {out} after epoch {state.epoch}" + (
        f" with {dist.world_size} processes (saved with {len(saved)}: the other processes start fresh random "
        f"streams and take process 0's method state)" if len(saved) != dist.world_size else ""))


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
        payload = {"model_spec": spec, "model": ckpt["model"], "config": ckpt["config"], "epoch": ckpt["epoch"],
                   "version": ckpt.get("version", __version__)}
        save_checkpoint(path, _best_payload(payload, state.get("best_weights", "raw"), ckpt.get("averager")))


def _best_payload(payload: dict, weights: str, averager: dict | None) -> dict:
    """best.pt's content: the raw weights, or --wa's averaged ones when they were selected."""
    if weights == "averaged" and averager is not None:
        return {**payload, "model": averager["state"], "weights": "averaged"}
    return {**payload, "weights": "raw"}


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
