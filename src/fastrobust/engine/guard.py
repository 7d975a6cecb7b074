"""Catastrophic overfitting: the collapse mark, and the guard that recovers from it (``--guard``).

A run has **collapsed** (catastrophic overfitting, Wong et al. 2020) at an epoch when its
validation robust accuracy (the per-epoch PGD-CW attack on the held-out split, which the engine runs
anyway) shows one of the two signatures of a model that has learnt to mask single-step attacks:

- **a fall from robustness it had reached**: PGD accuracy below ``COLLAPSE_RATIO`` (half) of the best
  seen so far and at least ``COLLAPSE_DROP`` (10 points) under it, while FGSM accuracy (one step of eps
  from x, 1 pass per validation example) stays high: PGD accuracy is under half of it too;
- **FGSM made harmless**: FGSM accuracy at least ``FGSM_OF_CLEAN`` (80%) of the clean accuracy, and PGD
  accuracy under half of it and at least ``OVERFIT_GAP`` (30 points) under it. This catches a run that
  overfits before it was ever robust (MNIST FGSM-RS and M+DEAT, right at the end of the eps warm-up).

A model that is simply not robust yet is neither: FGSM hurts it too (the demo's PGD-10 AT at the end of
its eps warm-up: 24.6% PGD, 63.2% FGSM, 92.4% clean; a hard data set's PGD, FGSM and clean accuracies
are all low and close), and its PGD accuracy has not fallen from anything. On every PGD-AT and GAAT run
of ``benchmarks/records`` neither signature occurs, and every collapse listed in docs/results.md shows
the second (tests/test_collapse_records.py re-judges them all). Ordinary epoch-to-epoch noise moves by a few points.

Without the guard the run only says so (``collapsed`` and ``collapsed_epoch`` in summary.json, a line in
train.log) and the marked epochs stay candidates for the best checkpoint like any other: the mark changes
nothing in the delivered model. With it, the engine keeps a copy of the training state
(weights, optimizer, gradient scaler, method state) at every new best epoch; on a collapse it
restores that copy, unless the collapsed epoch is clearly better (``RESTORE_MARGIN``, 5 points of
validation robust accuracy, above it: a run that climbs back after an event, still under the FGSM
gap, keeps its progress; restoring the last eps warm-up epoch of a run that was never robust again
and again threw away each partial recovery, MNIST M+DEAT seed 2), and asks the method to strengthen
its attack for the rest of the run
(:meth:`fastrobust.methods.Method.strengthen`: twice the steps or replays at half the step, the
same reach), and records the event in metrics.jsonl and train.log. After a first event, an epoch
whose validation FGSM accuracy is still ``WEAK_GAP`` (15 points) or more above its PGD accuracy
strengthens the attack again without restoring anything (the attack is still too weak or masked:
a robust model of the MNIST suite shows 2-7 points at full eps, PGD-40 AT, GAAT and Free alike;
DEAT-d and M+DEAT after the guard's first event showed 16-20 epoch after epoch), but not in the
epoch right after an event: there the model is still adapting to the new attack (MNIST FGSM-RS,
DEAT-d and M+DEAT showed 19-28 points there and 2-7 one epoch later). The guard strengthens at
most ``MAX_STRENGTHENINGS`` times (4x the steps), so that a run's cost stays bounded. The passes
of the collapsed epochs stay counted: they were spent. fast_adversarial's early stop only stops
and keeps the last good model; this continues from it with a stronger attack.
"""

from __future__ import annotations

import copy

from .distributed import to_cpu

COLLAPSE_RATIO = 0.5
COLLAPSE_DROP = 0.10
OVERFIT_GAP = 0.30
FGSM_OF_CLEAN = 0.80     # FGSM accuracy this close to clean: the single-step attack barely hurts the model
RESTORE_MARGIN = 0.05    # a collapsed epoch this far above the remembered state is kept, not rolled back
WEAK_GAP = 0.15          # after an event, FGSM this far above PGD: the attack is still too weak, strengthen again
MAX_STRENGTHENINGS = 2


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

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.snapshot: dict | None = None
        self.events: list[dict] = []
        self.best_robust: float | None = None
        self.collapsed_epoch: int | None = None
        self.can_strengthen = True       # false once the method's attack is at the guard's limit, or has no level
        self.reason: str | None = None   # why the last observed epoch is a collapse (None: it is not)

    def observe(self, epoch: int, robust: float | None, fgsm: float | None = None,
                clean: float | None = None) -> bool:
        """See epoch ``epoch``'s (1-based) validation robust (and FGSM and clean) accuracy; returns whether it is a
        collapse (its reason, with the figures, in :attr:`reason`). Give ``fgsm`` only for epochs that end at full
        eps (earlier in an eps warm-up, validation at full eps finds FGSM far above PGD in any model: it has not
        been trained at that radius yet)."""
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
            boost = getattr(method, "boost", 0)
            model.load_state_dict(snap["model"])
            opt.load_state_dict(snap["optimizer"])
            scaler.load_state_dict(snap["scaler"])
            method.load_state_dict(copy.deepcopy(snap["method"]))
            if hasattr(method, "boost"):
                method.boost = boost           # earlier strengthenings stay
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

    def _strengthen(self, method) -> str:
        if getattr(method, "boost", 0) >= MAX_STRENGTHENINGS:
            self.can_strengthen = False
            return f"none (the attack was already strengthened {MAX_STRENGTHENINGS} times, the guard's limit)"
        change = method.strengthen()
        self.can_strengthen = change is not None and getattr(method, "boost", 0) < MAX_STRENGTHENINGS
        return change or "none (the method has no attack level)"

    def state_dict(self) -> dict:
        return {"snapshot": self.snapshot, "events": self.events, "best_robust": self.best_robust,
                "collapsed_epoch": self.collapsed_epoch, "can_strengthen": self.can_strengthen}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.snapshot, self.events = state["snapshot"], state["events"]
            self.best_robust, self.collapsed_epoch = state["best_robust"], state["collapsed_epoch"]
            self.can_strengthen = state.get("can_strengthen", True)
