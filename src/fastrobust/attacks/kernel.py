"""The one step loop of every first-order attack in fastrobust.

Evaluation PGD and FGSM (:mod:`.pgd`) and the training attacks (``fastrobust.methods``: PGD and KL
ascent with FAT's early stop, N-FGSM, the replays of Free and DEAT, GAAT's approximated steps) all run
:func:`ascend`, with pluggable parts:

* the start: the ``delta`` it is given;
* the gradient: by default the input gradient of a summed ``objective`` (:func:`input_grad`); or any
  ``gradient(k, x, delta, against) -> (grad, logits)`` (a replay's weight step, GAAT's Taylor partial sum);
* the step: by default the threat model's projected ascent step (:meth:`ThreatModel.step`);
* the stopping rule: none, or :class:`EarlyStop` (FAT's rule; with ``tau = 0`` evaluation's early stop).

With a stopping rule, the batch keeps its shape: every step forwards the whole batch and updates only the
running examples (``torch.where`` on a mask), so no step reads anything on the host; a stopped example is
not charged (the passes are a device tensor). The loop may instead ``compact`` the batch to its running
examples: fewer forwards for one host read per step, which costs nothing on the CPU (see
:func:`compacts`) and is what evaluation does in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from fastrobust.attacks.compiled import input_grad_only, is_compiled
from fastrobust.attacks.projection import ThreatModel, per_example

#: ``objective(logits, against) -> scalar``: the summed loss an attack ascends (``against``: the labels,
#: or the clean logits for TRADES' KL)
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``gradient(k, x, delta, against) -> (grad, logits or None)``: the ascent direction's gradient at step k
Gradient = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
#: ``step(delta, grad, alpha, x, eps) -> delta``: one ascent step (may reuse delta's and grad's memory)
Step = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor, float], torch.Tensor]


def summed_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch, in float32, in one kernel (the same gradient as the sum of the
    per-example losses, bit for bit)."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def summed(per_example_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Objective:
    """The :data:`Objective` summing ``per_example_loss(logits, against)`` over the batch."""
    return lambda logits, against: per_example_loss(logits, against).sum()


#: whether training attacks with a stopping rule forward only their running examples on the CPU (see
#: :func:`compacts`); tests/test_syncs.py turns it off to run, on the CPU, what an accelerator runs
COMPACT_ON_CPU = True


def compacts(model, x: torch.Tensor) -> bool:
    """Whether an attack with a stopping rule on ``x`` should forward only its running examples: on the CPU,
    where reading the mask on the host costs nothing and the stopped examples' forwards are saved, and only
    with the model in eval mode (in train mode a sub-batch would change BatchNorm's batch statistics). On an
    accelerator the batch is masked instead: static shapes, nothing for the device to wait on."""
    return COMPACT_ON_CPU and x.device.type == "cpu" and not any(m.training for m in model.modules()) \
        and not is_compiled(model)   # compiled: static shapes (see fastrobust.attacks.compiled)


def input_grad(model, x_adv: torch.Tensor, against: torch.Tensor,
               objective: Objective = summed_ce) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``objective`` w.r.t. the input ``x_adv`` only (the model's parameters get none), and the
    detached logits."""
    x_adv = x_adv.detach().requires_grad_(True)
    with input_grad_only(model):   # a compiled model's traced backward: the input gradient alone
        logits = model(x_adv)
    (grad,) = torch.autograd.grad(objective(logits, against), x_adv)
    return grad, logits.detach()


class EarlyStop:
    """FAT's stopping rule (Zhang et al. 2020): an example stops at its (tau+1)-th misclassified iterate, i.e.
    it still takes ``tau`` steps after it is first misclassified; ``tau = 0``: it stops as soon as it is
    misclassified (evaluation's early stop). Keeps, per example, whether it is still ``running`` and the
    steps it has ``taken``, on the device."""

    def __init__(self, y: torch.Tensor, tau: int = 0) -> None:
        self.y = y
        self.running = torch.ones(len(y), dtype=torch.bool, device=y.device)
        self.budget = torch.full((len(y),), tau, device=y.device)
        self.taken = torch.zeros(len(y), device=y.device)

    def __call__(self, logits: torch.Tensor, rows) -> torch.Tensor:
        """Given the logits of the current iterates of ``rows`` (all running when compacted), the mask of
        those that go on and take this step."""
        wrong = logits.argmax(1) != self.y[rows]
        go = self.running[rows] & (~wrong | (self.budget[rows] > 0))
        self.budget[rows] -= wrong.long()
        self.running[rows] = go
        self.taken[rows] += go
        return go


def ascend(model, x: torch.Tensor, delta: torch.Tensor, steps: int, alpha: float, eps: float, threat: ThreatModel,
           against: torch.Tensor, *, objective: Objective = summed_ce, gradient: Gradient | None = None,
           step: Step | None = None, stop: EarlyStop | None = None, keep_grad: bool = False,
           compact: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, float | torch.Tensor]:
    """``steps`` ascent steps of size ``alpha`` from ``delta`` (the start); returns ``(delta, grad, passes)``.

    ``grad``: the gradient of the last step taken (None if none), intact when ``keep_grad`` (the L-inf
    step signs it in place otherwise); with ``stop`` it is the whole batch's (``compact``: the examples'
    still running after it). ``passes``: one per running example and step (a float, or a device tensor
    with ``stop`` unless ``compact``). ``x``, ``delta`` and ``against`` are ``(B, ...)``; ``delta`` is not
    modified in place.
    """
    step = threat.step if step is None else step
    if gradient is None:
        gradient = lambda k, xs, ds, ag: input_grad(model, xs + ds, ag, objective)   # noqa: E731
    n, grad = len(x), None
    delta = delta.detach().clone()
    if stop is None:   # the plain loop: no masks (the common case)
        for k in range(steps):
            grad, _ = gradient(k, x, delta, against)
            delta = step(delta, grad.clone() if keep_grad and k == steps - 1 else grad, alpha, x, eps)
        return delta, grad, float(n * steps)
    if compact:        # forward the running examples only (a host read per step: evaluation, the CPU)
        rows, passes = torch.arange(n, device=x.device), 0.0
        for k in range(steps):
            xs, ds = x[rows], delta[rows]
            grad, logits = gradient(k, xs, ds, against[rows])
            passes += len(rows)
            go = stop(logits, rows)
            rows, xs, ds, grad = rows[go], xs[go], ds[go], grad[go]
            if not len(rows):
                break
            delta[rows] = step(ds, grad.clone() if keep_grad and k == steps - 1 else grad, alpha, xs, eps)
        return delta, grad, passes
    passes = torch.zeros((), dtype=torch.float64, device=x.device)
    for k in range(steps):   # masked full-batch steps: static shapes, no host read
        grad, logits = gradient(k, x, delta, against)
        passes += stop.running.sum()
        go = stop(logits, slice(None))
        stepped = step(delta.clone(), grad.clone() if keep_grad and k == steps - 1 else grad, alpha, x, eps)
        delta = torch.where(per_example(go, delta), stepped, delta)
    return delta, grad, passes
