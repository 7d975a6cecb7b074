"""Best-checkpoint selection: which epoch, and which of its weights (raw or --wa's average), best.pt holds."""

from __future__ import annotations

from .loop import RunState


def select_best(state: RunState, val: dict, epoch: int, selects_by: str, averaging: bool) -> bool:
    """Whether the model after ``epoch`` is the best so far (then recorded in ``state``).

    Best = highest validation robust accuracy, ties broken by clean accuracy, or the other way round
    when ``selects_by`` is "clean" (natural training); no validation split: the last epoch. With
    weight averaging the averaged weights compete too (``val``'s ``wa_*`` figures): the better of the
    two is the epoch's candidate, the raw weights on a tie, the averaged ones without validation."""
    candidates = [("raw", val["robust_acc"], val["clean_acc"])]
    if "wa_robust_acc" in val:
        candidates.append(("averaged", val["wa_robust_acc"], val["wa_clean_acc"]))
    scored = []
    for weights, robust, clean in candidates:
        score = [robust, clean] if val["n"] else [0.0, 0.0]
        if selects_by == "clean":
            score.reverse()
        scored.append((score, weights))
    score, weights = max(scored, key=lambda c: c[0])
    if val["n"] == 0 and averaging:
        weights = "averaged"
    improved = val["n"] == 0 or score > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.best_weights = score, epoch, weights
    return improved
