"""Catastrophic overfitting: the collapse mark, and the guard that recovers from it (``--guard``).

:func:`diagnose` marks an epoch as **collapsed** when its validation accuracies show one of two
signatures of a model that masks single-step attacks (Wong et al. 2020):

- **a fall from robustness it had reached**: PGD accuracy below ``COLLAPSE_RATIO`` of the best so far
  and at least ``COLLAPSE_DROP`` under it, while FGSM accuracy stays high (PGD under ``COLLAPSE_RATIO`` of it);
- **FGSM made harmless**: FGSM accuracy at least ``FGSM_OF_CLEAN`` of the clean accuracy, and PGD accuracy
  under ``COLLAPSE_RATIO`` of FGSM's and at least ``OVERFIT_GAP`` under it.

Without the guard, the run only records the mark (``collapsed``, ``collapsed_epoch`` in summary.json, a
line in train.log). With it, :class:`Guard` keeps the training state of every new best epoch; on a
collapse it restores that state (unless the collapsed epoch is ``RESTORE_MARGIN`` above it) and asks the
method to strengthen its attack (:meth:`fastrobust.methods.Method.strengthen`: twice the level, the first
time to at least ``MIN_BOOSTED_LEVEL``, the same reach in smaller steps). After an event, an epoch whose
FGSM accuracy is still ``WEAK_GAP`` above its PGD accuracy (not the epoch right after the event)
strengthens again without restoring, at most ``MAX_STRENGTHENINGS`` times in all. Each event is
recorded in metrics.jsonl and train.log; the passes of collapsed epochs stay counted.
The measurements behind these thresholds: benchmarks/records/JOURNAL.md, "The collapse guard's rules".
"""

from __future__ import annotations

import copy

from ..methods import Method
from .distributed import to_cpu
from .rundir import pct

COLLAPSE_RATIO = 0.5
COLLAPSE_DROP = 0.10
OVERFIT_GAP = 0.30
FGSM_OF_CLEAN = 0.80     # FGSM accuracy this close to clean: the single-step attack barely hurts the model
RESTORE_MARGIN = 0.05    # a collapsed epoch this far above the remembered state is kept, not rolled back
WEAK_GAP = 0.15          # after an event, FGSM this far above PGD: the attack is still too weak, strengthen again
MAX_STRENGTHENINGS = 2   # the most strengthenings in a run (4x the level), so that its cost stays bounded
MIN_BOOSTED_LEVEL = 4    # a strengthened attack takes at least this many steps (or replays)


def diagnose(best_robust: float | None, robust: float | None, fgsm: float | None = None,
             clean: float | None = None) -> str | None:
    """Why validation robust accuracy ``robust`` is a collapse (a sentence with the figures), or None.

    ``best_robust``: the best validation robust accuracy of the run so far (of epochs not marked); ``fgsm`` and
    ``clean``: the same model's validation FGSM and clean accuracy (``fgsm`` None: not judged against FGSM, e.g.
    during the eps warm-up; ``clean`` None: the FGSM-made-harmless signature is not judged)."""
    if robust is None:
        return None
    pct = lambda v: f"{100 * v:.1f}%"
    masked = fgsm is not None and robust < COLLAPSE_RATIO * fgsm
    if (best_robust is not None and robust < COLLAPSE_RATIO * best_robust and best_robust - robust >= COLLAPSE_DROP
            and (fgsm is None or masked)):
        return (f"PGD {pct(robust)} fell from the best of {pct(best_robust)}"
                + ("" if fgsm is None else f" while FGSM stayed at {pct(fgsm)}"))
    if masked and clean is not None and fgsm - robust >= OVERFIT_GAP and fgsm >= FGSM_OF_CLEAN * clean:
        return f"PGD {pct(robust)} while FGSM is {pct(fgsm)} at {pct(clean)} clean (FGSM barely hurts the model)"
    return None


def collapsed(best_robust: float | None, robust: float | None, fgsm: float | None = None,
              clean: float | None = None) -> bool:
    """Whether validation robust accuracy ``robust`` is a collapse (see :func:`diagnose`)."""
    return diagnose(best_robust, robust, fgsm, clean) is not None


def _worth_restoring(snapshot_robust: float | None, robust: float | None) -> bool:
    """Whether a remembered state (its validation robust accuracy) is worth restoring after a collapse to ``robust``:
    unless the collapsed epoch is ``RESTORE_MARGIN`` above it (a snapshot saved before its accuracy was kept, an
    older run's checkpoint, always is)."""
    return snapshot_robust is None or robust is None or robust < snapshot_robust + RESTORE_MARGIN


class Guard:
    """The last good training state and the events so far; ``enabled=False``: marks only."""

    def __init__(self, enabled: bool, max_passes: float | None = None) -> None:
        self.enabled = enabled
        self.max_passes = max_passes     # the cost limit (passes per example per epoch); None: MAX_STRENGTHENINGS
        self.epoch_passes: float | None = None   # the last observed epoch's passes per example
        self.snapshot: dict | None = None
        self.events: list[dict] = []
        self.best_robust: float | None = None
        self.collapsed_epoch: int | None = None
        self.can_strengthen = True       # false once the method's attack is at the guard's limit, or has no level
        self.reason: str | None = None   # why the last observed epoch is a collapse (None: it is not)

    def observe(self, epoch: int, robust: float | None, fgsm: float | None = None,
                clean: float | None = None, passes: float | None = None) -> bool:
        """See epoch ``epoch``'s (1-based) validation robust (and FGSM and clean) accuracy; returns whether it is a
        collapse (its reason, with the figures, in :attr:`reason`). Give ``fgsm`` only for epochs that end at full
        eps (earlier in an eps warm-up, validation at full eps finds FGSM far above PGD in any model: it has not
        been trained at that radius yet). ``passes``: the epoch's passes per example (the cost limit's measure)."""
        self.epoch_passes = passes
        self.reason = diagnose(self.best_robust, robust, fgsm, clean)
        hit = self.reason is not None
        if hit and self.collapsed_epoch is None:
            self.collapsed_epoch = epoch
        if robust is not None and not hit and (self.best_robust is None or robust > self.best_robust):
            self.best_robust = robust
        return hit

    def remember(self, epoch: int, robust: float | None, model, opt, scaler, method) -> None:
        """Keep the training state of a good epoch (called at every new best), with its validation robust accuracy."""
        if self.enabled:
            parts = (("model", model), ("optimizer", opt), ("scaler", scaler), ("method", method))
            self.snapshot = {"epoch": epoch, "robust": robust,
                             **{key: to_cpu(part.state_dict(), copy=True) for key, part in parts}}

    def recover(self, epoch: int, robust: float, model, opt, scaler, method) -> dict | None:
        """After a collapse at ``epoch``: restore the last good state unless this one is clearly better, strengthen
        the attack; the event."""
        if not self.enabled:
            return None
        snap = self.snapshot
        kept = None
        if snap is not None and not _worth_restoring(snap.get("robust"), robust):
            kept = {"epoch": snap["epoch"], "val_robust_acc": snap["robust"]}
            snap = None
        if snap is not None:    # else none to restore (a collapse before any good epoch, or this one is better)
            boost = method.boost
            model.load_state_dict(snap["model"])
            opt.load_state_dict(snap["optimizer"])
            scaler.load_state_dict(snap["scaler"])
            method.load_state_dict(copy.deepcopy(snap["method"]))
            for _ in range(boost - method.boost):   # earlier strengthenings stay
                method.strengthen(MIN_BOOSTED_LEVEL)
        event = {"epoch": epoch, "reason": "collapse", "val_robust_acc": robust,
                 "best_val_robust_acc": self.best_robust, "restored_epoch": snap and snap["epoch"],
                 "change": self._strengthen(method)}
        if kept:
            event["not_restored"] = kept   # the remembered state, clearly below this one
        self.events.append(event)
        return event

    def still_weak(self, epoch: int, robust: float | None, fgsm: float | None) -> bool:
        """Whether epoch ``epoch``, which did not collapse, shows the attack still too weak: the last event was two
        or more epochs ago (one epoch to adapt to it), the attack can still be strengthened, and the epoch's
        validation FGSM accuracy (at full eps) is ``WEAK_GAP`` or more above its PGD accuracy."""
        return (self.enabled and self.can_strengthen and bool(self.events) and epoch >= self.events[-1]["epoch"] + 2
                and robust is not None and fgsm is not None and fgsm - robust >= WEAK_GAP)

    def reinforce(self, epoch: int, robust: float, fgsm: float, method) -> dict:
        """Strengthen the attack again, keeping the weights (see :meth:`still_weak`); the event."""
        event = {"epoch": epoch, "reason": "weak", "val_robust_acc": robust, "val_fgsm_acc": fgsm,
                 "restored_epoch": None, "change": self._strengthen(method)}
        self.events.append(event)
        return event

    def _strengthen(self, method: Method) -> str:
        """Strengthen within the limit: ``MAX_STRENGTHENINGS``, or with ``max_passes`` while twice the last
        epoch's passes per example (a doubled attack's cost, at most) stay within it."""
        if self.max_passes is None and method.boost >= MAX_STRENGTHENINGS:
            self.can_strengthen = False
            return f"none (the attack was already strengthened {MAX_STRENGTHENINGS} times, the guard's limit)"
        if self.max_passes is not None and 2 * (self.epoch_passes or 0.0) > self.max_passes:
            self.can_strengthen = False
            return (f"none (twice this epoch's {self.epoch_passes:.3g} passes per example would pass the guard's "
                    f"cost limit, --guard-passes {self.max_passes:g})")
        change = method.strengthen(MIN_BOOSTED_LEVEL)
        self.can_strengthen = change is not None and (self.max_passes is not None or method.boost < MAX_STRENGTHENINGS)
        return change or "none (the method has no attack level)"

    def state_dict(self) -> dict:
        return {"snapshot": self.snapshot, "events": self.events, "best_robust": self.best_robust,
                "collapsed_epoch": self.collapsed_epoch, "can_strengthen": self.can_strengthen}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.snapshot, self.events = state["snapshot"], state["events"]
            self.best_robust, self.collapsed_epoch = state["best_robust"], state["collapsed_epoch"]
            self.can_strengthen = state.get("can_strengthen", True)


def guard_note(event: dict | None) -> str:
    """The end of a collapse's train.log line: what --guard did, or a hint when it is off."""
    if event is None:
        return ("; marked only, the epoch stays a candidate for the best checkpoint (--guard restores the best "
                "state and strengthens the attack)")
    if event["restored_epoch"]:
        done = f"restored epoch {event['restored_epoch']}'s state"
    elif kept := event.get("not_restored"):
        done = f"kept this state (epoch {kept['epoch']}'s, {pct(kept['val_robust_acc'])} robust, is clearly below it)"
    else:
        done = "no earlier state to restore"
    return f"; guard: {done}, {event['change']}"
