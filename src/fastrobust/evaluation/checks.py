"""Sanity checks against gradient masking (Athalye et al. 2018; Carlini et al. 2019).

Each check returns ``None`` or a flag ``{"check": NAME, "message": TEXT}``. A flag
does not change any number; it says why the numbers may overstate robustness.

- ``nondeterministic``: two eval-mode forward passes of the same inputs differ.
- ``eps_zero``: an attack with eps = 0 does not give the clean accuracy.
- ``zero_gradients``: the input gradient of the margin loss is exactly zero.
- ``robust_above_clean``: an attack's accuracy exceeds the clean accuracy.
- ``more_steps_or_restarts``: a stronger PGD (more steps or restarts) fails on
  examples that a weaker one fooled.
- ``square_beats_whitebox``: the black-box Square attack fools examples that every
  white-box attack run before it missed.
- ``attack_gap``: a later attack of the cascade (AutoAttack, one of its components,
  Square) fools more than ``GAP_THRESHOLD`` of all examples that every PGD/CW attack
  left correct: the PGD figures overstate robustness.

(``non_finite_logits``, a model whose clean logits are NaN or infinite, is flagged by
:func:`fastrobust.evaluation.evaluate` itself, which then reports no accuracy.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks import margin_loss, pgd
from .specs import AttackSpec

#: Examples used by the cheap model probes (determinism, eps = 0, zero gradients).
PROBE_SIZE = 100
#: Examples fooled by a weaker PGD that are re-attacked by a stronger one.
STEPS_PROBE_SIZE = 100
#: A stronger PGD may miss this fraction of the probed examples (its random starts and step differ)
#: and fewer than STEPS_MIN_COUNT of them before the flag.
STEPS_TOLERANCE = 0.1
STEPS_MIN_COUNT = 3
#: Square may fool up to this fraction of all examples beyond the white-box attacks
#: before the flag (AutoAttack's own threshold: 0.2 points of accuracy).
SQUARE_TOLERANCE = 0.002
#: A later attack may end this far below the PGD/CW worst case, as a fraction of all n examples
#: (on the same examples: those every PGD/CW attack left correct), and fool at least GAP_MIN_COUNT
#: of them, before the flag. AutoAttack usually ends 0-5 points below a strong PGD on an honestly
#: trained model (sampling noise at n = 1000 is about 1.5 points); 10 points means PGD's
#: gradient does not find what AutoAttack finds (16 points in fastrobust issue 14's MNIST case).
GAP_THRESHOLD = 0.10
GAP_MIN_COUNT = 5
#: Relative difference of two forward passes regarded as the same output.
DETERMINISM_TOLERANCE = 1e-4


def flag(check: str, message: str) -> dict:
    return {"check": check, "message": message}


@dataclass
class Record:
    """What one attack did, per example (bool tensors over all n examples, on the CPU)."""

    spec: AttackSpec
    ran: torch.Tensor            # the attack ran on the example
    correct: torch.Tensor        # still classified correctly after the attack (False where not run)
    fooled: torch.Tensor         # robust before this attack, fooled by it
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)   # the components of AutoAttack, as Records


@torch.no_grad()
def check_determinism(model: nn.Module, x: torch.Tensor) -> dict | None:
    a, b = model(x).float(), model(x).float()
    diff = (a - b).abs().max().item()
    changed = int((a.argmax(1) != b.argmax(1)).sum())
    if changed or diff > DETERMINISM_TOLERANCE * max(1.0, a.abs().max().item()):
        return flag("nondeterministic",
                    f"the model is not deterministic in eval mode: two forward passes of the same {len(x)} inputs "
                    f"differ by up to {diff:.3g} in the logits ({changed} predictions changed). A randomised model "
                    "needs attacks that average over its randomness (EOT); these accuracies are not reliable.")
    return None


@torch.no_grad()
def check_eps_zero(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> dict | None:
    clean = int((model(x).argmax(1) == y).sum())
    with torch.enable_grad():
        x0 = pgd(model, x, y, 0.0, steps=2, norm=norm, loss="ce", random_start=True,
                 generator=torch.Generator().manual_seed(0))
    at_zero = int((model(x0).argmax(1) == y).sum())
    if at_zero != clean:
        return flag("eps_zero",
                    f"an attack with eps = 0 gives {at_zero} correct of {len(x)} examples where the clean pass gives "
                    f"{clean}: the model's prediction depends on more than its input (randomness, or a different "
                    "path when gradients are on); the accuracies are not reliable.")
    return None


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """Exactly-zero input gradients of the margin loss (which, unlike cross-entropy, does not
    saturate on confident predictions) mean gradient attacks cannot move those examples."""
    if len(x) == 0:
        return None
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(margin_loss(model(x), y).sum(), x)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    if zero:
        return flag("zero_gradients",
                    f"the input gradient of the margin loss is exactly zero for {zero} of {len(x)} correctly "
                    "classified examples: gradient attacks cannot move them (gradient masking, e.g. quantised or "
                    "thresholded inputs). Trust the black-box Square attack more than the white-box ones here.")
    return None


def check_robust_above_clean(records: list[Record], clean_correct: torch.Tensor) -> list[dict]:
    flags = []
    for r in records:
        measured = r.ran | ~clean_correct
        clean, robust = int(clean_correct[measured].sum()), int(r.correct[measured].sum())
        if robust > clean:
            flags.append(flag("robust_above_clean",
                              f"{r.spec.name}: {robust} of {int(measured.sum())} examples are correct under attack "
                              f"but only {clean} without: an attack made misclassified inputs correct, so the model "
                              "reacts to small noise in odd ways (randomness or masking); robust accuracy must never "
                              "exceed clean accuracy."))
    return flags


def weaker(a: AttackSpec, b: AttackSpec) -> bool:
    """``a`` is a PGD with no more steps and restarts than ``b`` on the same loss (FGSM: one CE step)."""
    if a.kind != "pgd" or b.kind != "pgd" or a.loss != b.loss or a == b:
        return False
    return a.steps <= b.steps and a.restarts <= b.restarts and (b.random_start or not a.random_start)


def check_more_steps(records: list[Record], clean_correct: torch.Tensor,
                     rerun: Callable[[AttackSpec, torch.Tensor], torch.Tensor]) -> list[dict]:
    """For each weaker/stronger PGD pair, the examples the weaker one fooled must be fooled by the
    stronger one too. ``rerun(spec, idx)`` runs ``spec`` on examples ``idx`` and says which stay correct
    (used where the stronger attack did not run, having been spared examples already fooled)."""
    flags = []
    for a in records:
        for b in records:
            if not weaker(a.spec, b.spec):
                continue
            fooled_by_a = a.ran & ~a.correct & clean_correct
            known = fooled_by_a & b.ran
            survived = int((known & b.correct).sum())
            idx = (fooled_by_a & ~b.ran).nonzero().squeeze(1)[:max(0, STEPS_PROBE_SIZE - int(known.sum()))]
            if len(idx):
                survived += int(rerun(b.spec, idx).sum())
            probed = int(known.sum()) + len(idx)
            if survived >= STEPS_MIN_COUNT and survived > STEPS_TOLERANCE * probed:
                flags.append(flag("more_steps_or_restarts",
                                  f"{b.spec.label} did not fool {survived} of {probed} examples that the weaker "
                                  f"{a.spec.label} fooled: more steps or restarts must not raise accuracy. The "
                                  "gradient does not lead uphill on the loss (gradient masking or a bad step size)."))
    return flags


def _parts(records: list[Record]) -> list[Record]:
    return [p for r in records for p in (r.parts or [r])]


def check_square(records: list[Record], n: int) -> list[dict]:
    """Square fooling examples that every white-box attack ran on and missed."""
    parts = _parts(records)
    white = [p for p in parts if p.spec.white_box]
    flags = []
    for sq in parts:
        if sq.spec.components != ("square",) or not white:
            continue
        beaten = sq.ran & ~sq.correct
        for p in white:
            beaten &= p.ran & p.correct
        count = int(beaten.sum())
        if count > SQUARE_TOLERANCE * n:
            names = ", ".join(dict.fromkeys(p.spec.name for p in white))
            flags.append(flag("square_beats_whitebox",
                              f"the black-box Square attack fooled {count} examples ({100 * count / n:.1f}% of {n}) "
                              f"that every white-box attack ({names}) missed: a sign of gradient masking; the "
                              "white-box accuracies overstate robustness."))
    return flags


def check_attack_gap(records: list[Record], clean_correct: torch.Tensor) -> list[dict]:
    """A later attack (not PGD/CW/FGSM) fooling many examples that every PGD-kind attack left correct."""
    pgd_records = [r for r in records if r.spec.kind == "pgd"]
    if not pgd_records:
        return []
    n = len(clean_correct)
    pgd_ok = clean_correct.clone()
    for r in pgd_records:
        pgd_ok &= r.correct | ~r.ran
    names = ", ".join(r.spec.name for r in pgd_records)
    flags = []
    for r in records:
        if r.spec.kind == "pgd":
            continue
        fooled = pgd_ok & r.ran & ~r.correct
        count = int(fooled.sum())
        if count >= GAP_MIN_COUNT and count > GAP_THRESHOLD * n:
            pgd_acc, after = int(pgd_ok.sum()) / n, int((pgd_ok & ~fooled).sum()) / n
            flags.append(flag("attack_gap",
                              f"{r.spec.name} fooled {count} of the {int(pgd_ok.sum())} examples that every PGD/CW "
                              f"attack ({names}) left correct: robust accuracy {100 * pgd_acc:.1f}% under "
                              f"{names}, {100 * after:.1f}% after {r.spec.name} on the same {n} examples, a gap of "
                              f"{100 * (pgd_acc - after):.1f} points (more than {100 * GAP_THRESHOLD:.0f}). This "
                              f"model's PGD figures overstate its robustness and should not be trusted; report "
                              f"{r.spec.name}'s."))
    return flags
