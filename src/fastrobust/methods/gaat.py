"""GAAT: adversarial training with gradient approximation (Gong et al. 2023), as fastrobust reconstructs it.

Only the paper's abstract can be had, so this is fastrobust's own
reconstruction from it (docs/methods.md, "GAAT"), not the authors' algorithm.

For one example, l(delta) = CE(f(x + delta), y). PGD-K needs the true gradient
g_k of l at each of its K iterates. GAAT keeps, per example, an *anchor*: the
last iterate delta_j where it paid for a true gradient g_j (and l_j = l(delta_j)).
The Taylor partial sum around it,

    order 1:  l~(delta) = l_j + g_j . s                      (s = delta - delta_j)
    order 2:  l~(delta) = l_j + g_j . s + h/2 |s|^2,

predicts the adversarial loss, and its gradient (g_j, or g_j + h s) replaces
the true one. Every ``check_every`` steps the loss is measured at the current
iterate (a forward pass) and the relative remainder

    rho = |l(delta) - l~(delta)| / max(|l~(delta) - l_j|, 1e-12)

decides: rho <= tau keeps the approximation; rho > tau pays for a true gradient
there, which becomes the new anchor. The first iterate (the uniform random
start, as PGD) always gets a true gradient.

Choices the abstract leaves open, and their reasons:

* Order 2's Hessian-vector estimate is a secant one: h = (s . y) / (s . s)
  from the example's last two anchors (y the difference of their gradients), a
  Barzilai-Borwein scalar curvature. It costs nothing extra; until an example
  has two anchors it is order 1 (h = 0).
* Work only where it is needed. The check forward runs on the whole batch
  (with its graph kept; ``--check-graph false`` drops it, and every refresh is
  then a sub-batch). If more than 2/3 of the examples need a true gradient,
  one backward through that graph refreshes *every* example (2/3 pass each: it
  costs less than re-running the sub-batch); otherwise only the examples that
  need one are forwarded and backwarded again as a sub-batch (1 pass each).
  The cost counted is the work done: 1/3 per checked example, plus 2/3 per
  example (full backward) or 1 per refreshed example (sub-batch).
* In train mode (``--attack-eval false``, the default, as fastrobust's PGD-AT)
  a sub-batch normalises with its own BatchNorm statistics; models without
  BatchNorm (mnist-cnn) are unaffected.

With tau = 0 every check refreshes every example (rho > 0), so with
check_every = 1 GAAT takes exactly PGD-K's steps from the same random start
and produces its perturbation, at PGD-K's cost. A loss that is linear in delta
(rho = 0) finishes the attack on its first true gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks import THREAT_MODELS, ThreatModel, preserved_mode
from ..attacks.compiled import eager, input_grad_only
from ..attacks.kernel import ascend
from ..attacks.projection import per_example
from .base import BACKWARD, FORWARD, Batch, Component, Param
from .inputs import attack_eval_param

RECONSTRUCTION = ("GAAT here is fastrobust's own reconstruction from the paper's abstract (the full text cannot be "
                  "had), not the authors' code.")
TINY = 1e-12
FULL_BACKWARD_SHARE = BACKWARD   # refresh everyone with one backward when more than this share needs it


@dataclass
class AttackStats:
    """Counts of one or more GAAT attacks (summed over examples)."""

    examples: int = 0
    steps: int = 0             # gradient uses (K per example)
    approximated: int = 0      # of which used an approximated gradient
    true_grads: int = 0        # true input gradients paid for (the start included)
    checks: int = 0            # forwards that measured the remainder
    remainder_sum: float | torch.Tensor = 0.0  # sum of rho over the checks, each clipped at 1e6 (on the device)
    passes: float = 0.0        # attack passes (forward 1/3, backward 2/3)

    def add(self, other: "AttackStats") -> None:
        for name in ("examples", "steps", "approximated", "true_grads", "checks", "remainder_sum", "passes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_tensor(self, device) -> torch.Tensor:
        out = torch.tensor([self.examples, self.steps, self.approximated, self.true_grads, self.checks, 0.0,
                            self.passes], dtype=torch.float64, device=device)
        out[5] += torch.as_tensor(self.remainder_sum, dtype=torch.float64).to(device)
        return out


def _losses_and_grads(model, x, delta, y, rows=None):
    """Per-example CE losses at x + delta (rows only) and their input gradients."""
    if rows is not None:
        x, delta, y = x[rows], delta[rows], y[rows]
    ds = delta.detach().requires_grad_(True)
    if rows is not None:   # a sub-batch of data-dependent size: the eager module (no graph per size when compiled)
        model = eager(model)
    with input_grad_only(model):
        losses = torch.nn.functional.cross_entropy(model(x + ds).float(), y, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), ds)
    return losses.detach(), grad


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def gaat_attack(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, tau: float,
                check_every: int = 1, order: int = 1, eval_mode: bool = False,
                generator: torch.Generator | None = None, check_graph: bool = True,
                threat: ThreatModel = THREAT_MODELS["linf"],
                control: "AdaptiveTau | None" = None) -> tuple[torch.Tensor, AttackStats, torch.Tensor | None]:
    """K-step attack on CE with approximated gradients in the ``threat`` model; returns ``x_adv``, what it
    cost, and the (true or approximated) gradient of its last step (None for K = 0: the random start).

    ``check_graph=False`` runs the check forwards without an autograd graph (cheaper when few
    examples need a refresh); every refresh is then a sub-batch forward and backward. ``control``: an
    :class:`AdaptiveTau` that lowers tau while the remainder runs above its calmest level (``--adapt``).

    The steps are :func:`fastrobust.attacks.kernel.ascend`'s with :class:`_Taylor` as the gradient. The
    per-example state (anchors, their gradients, losses and curvatures) is updated with masks and index
    copies; the only host read is one per check step (how many examples need a true gradient, which decides
    between the full backward and the sub-batch, and the sub-batch's size)."""
    x, y = x.detach(), y.detach()
    n = len(x)
    st = AttackStats(examples=n, steps=n * steps)
    delta = threat.random_delta(x, eps, generator)
    if not steps:
        return (x + delta).clamp(0, 1), st, None
    taylor = _Taylor(model, st, tau, check_every, order, check_graph, control)
    step = lambda d, g, a, xs, e: threat.project(d + a * threat.direction(g), xs, e)   # noqa: E731  (g is kept)
    with preserved_mode(model, eval_mode), torch.enable_grad():
        delta, grad, _ = ascend(model, x, delta, steps, alpha, eps, threat, y, gradient=taylor, step=step)
    return (x + delta).clamp(0, 1), st, grad


class _Taylor:
    """GAAT's gradient at step k: the true one at the start (the first anchor), then the Taylor partial
    sum's around each example's anchor, checked every ``check_every`` steps (see the module's text)."""

    def __init__(self, model, st: AttackStats, tau: float, check_every: int, order: int, check_graph: bool,
                 control: "AdaptiveTau | None" = None):
        self.model, self.st, self.tau, self.check_every = model, st, tau, check_every
        self.order, self.check_graph, self.control = order, check_graph, control

    def __call__(self, k: int, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor):
        st, n = self.st, len(x)
        if k == 0:
            self.loss_j, self.g_j = _losses_and_grads(self.model, x, delta, y)
            st.true_grads += n
            st.passes += n
            self.anchor = delta.clone()
            self.curv = torch.zeros(n, device=x.device)     # order 2: secant curvature per example
            return self.g_j, None
        s = delta - self.anchor
        if k % self.check_every:
            st.approximated += n
            return self._approximation(s), None
        self._check(x, delta, y, s)
        return self._approximation(delta - self.anchor), None

    def _approximation(self, s: torch.Tensor) -> torch.Tensor:
        return self.g_j + per_example(self.curv, s) * s if self.order == 2 else self.g_j

    def _check(self, x, delta, y, s) -> None:
        """Measure the remainder with a forward pass (its graph kept for a possible full backward, or none) and
        refresh the anchors of the examples whose remainder exceeds tau."""
        st, n, g_j, loss_j, curv = self.st, len(x), self.g_j, self.loss_j, self.curv
        ds = delta.detach().requires_grad_(self.check_graph)
        with torch.set_grad_enabled(self.check_graph), input_grad_only(self.model):
            losses = torch.nn.functional.cross_entropy(self.model(x + ds).float(), y, reduction="none")
        change = _dot(g_j, s) + (0.5 * curv * _dot(s, s) if self.order == 2 else 0.0)
        rho = (losses.detach() - loss_j - change).abs() / change.abs().clamp_min(TINY)
        refresh = rho > (self.tau if self.control is None else self.control.tau(self.tau, rho))
        n_refresh = int(refresh.sum())        # the one host read of a check step
        st.checks += n
        st.remainder_sum = st.remainder_sum + rho.clamp(max=1e6).sum().double()   # stays on the device
        if self.check_graph and n_refresh > FULL_BACKWARD_SHARE * n:
            (new_g,) = torch.autograd.grad(losses.sum(), ds)
            refresh = torch.ones_like(refresh)
            new_loss, n_refresh = losses.detach(), n
            st.passes += n * (FORWARD + BACKWARD)
        else:
            del losses, ds
            st.passes += n * FORWARD + n_refresh
            if n_refresh:   # the refreshed examples as a sub-batch, put back in place by index
                rows = torch.nonzero_static(refresh, size=n_refresh).squeeze(1)
                new_loss, new_g = _losses_and_grads(self.model, x, delta, y, rows)
                new_loss, new_g = loss_j.index_copy(0, rows, new_loss), g_j.index_copy(0, rows, new_g)
        st.true_grads += n_refresh
        st.approximated += n - n_refresh
        if n_refresh:
            if self.order == 2:   # secant curvature from the old and new anchors of the refreshed examples
                secant = _dot(s, new_g - g_j) / _dot(s, s).clamp_min(TINY)
                self.curv = torch.where(refresh, secant, curv)
            self.anchor = torch.where(per_example(refresh, delta), delta, self.anchor)
            self.g_j, self.loss_j = new_g, new_loss


class AdaptiveTau:
    """GAAT's adaptive threshold (``--adapt``): refresh more where the remainder grows.

    After each check it tracks two moving averages of the check's mean remainder (each rho clipped at
    ``CLIP``): a fast one (weight ``FAST`` on the past, about ten checks) and a slow one (``SLOW``, about a
    thousand). The next check's threshold is tau x slow / fast, between tau / ``MAX_FACTOR`` and tau: while the
    remainder grows (the fast average above the slow one: early in training, while eps ramps up) the attack
    pays for more true gradients; where it is steady, tau is its value. Both averages are device tensors (no
    host read), kept in last.pt; under torchrun the mean is over every process's examples (``all_reduce_sum``,
    a collective at each check), so every process holds the same state."""

    FAST, SLOW, CLIP, MAX_FACTOR = 0.9, 0.999, 10.0, 8.0

    def __init__(self, all_reduce_sum=lambda t: t) -> None:
        self.all_reduce_sum = all_reduce_sum
        self.fast: torch.Tensor | None = None
        self.slow: torch.Tensor | None = None

    def tau(self, tau: float, rho: torch.Tensor) -> torch.Tensor | float:
        """This check's threshold (from the state before it); then the state takes in this check's ``rho``."""
        now = tau if self.fast is None else tau * (self.slow / self.fast).clamp(min=1 / self.MAX_FACTOR, max=1.0)
        count = torch.full((), float(len(rho)), dtype=torch.float64, device=rho.device)   # a fill: no copy
        total = self.all_reduce_sum(torch.stack([rho.detach().clamp(max=self.CLIP).sum().double(), count]))
        mean = total[0] / total[1]
        if self.fast is None:
            self.fast = self.slow = mean
        else:
            self.fast = self.FAST * self.fast + (1 - self.FAST) * mean
            self.slow = self.SLOW * self.slow + (1 - self.SLOW) * mean
        return now

    def state_dict(self) -> dict:
        return {"fast": self.fast, "slow": self.slow}

    def load_state_dict(self, state: dict, device) -> None:
        self.fast, self.slow = (None if state.get(k) is None else state[k].to(device) for k in ("fast", "slow"))


class GAATAttack(Component):
    """The training attack of GAAT and M+GAAT: :func:`gaat_attack` at the schedule's K, with its statistics."""

    def params(self):
        return (
            Param("tau", float, 0.3, "refresh an example's true gradient when the Taylor remainder, relative to "
                  "the predicted loss change, exceeds tau (0 with --check-every 1: exactly PGD-K)", minimum=0),
            Param("check_every", int, 2, "measure the remainder (one forward) every this many steps", minimum=1),
            Param("order", int, 1, "Taylor order of the partial sum: 1, or 2 (adds a secant Hessian-vector "
                  "estimate)", choices=(1, 2)),
            Param("check_graph", bool, True, "keep the check forward's autograd graph, so that one backward can "
                  "refresh everyone when more than 2/3 need it; false: graph-free checks (cheaper when refreshes "
                  "are few), every refresh a sub-batch forward and backward (the passes counted are the work done)"),
            attack_eval_param(False),
            Param("adapt", bool, False, "adapt tau to the remainder's growth: tau x (slow / fast moving average of the "
                  "checks' mean remainder), down to tau/8: more true gradients while the remainder grows (early in "
                  "training, while eps ramps up), tau where it is steady"),
        )

    def reset(self):
        self.epoch, self.last = AttackStats(), {}
        self.control = AdaptiveTau(self.ctx.all_reduce_sum) if self.v.get("adapt") else None

    def __call__(self, model, batch: Batch, level: int, alpha: float):
        v = self.v
        x_adv, st, grad = gaat_attack(model, batch.x, batch.y, batch.eps, alpha, level, v["tau"], v["check_every"],
                                      v["order"], v["attack_eval"], check_graph=v["check_graph"],
                                      threat=self.ctx.threat, control=self.control)
        self.epoch.add(st)
        return x_adv, st.passes, None if grad is None else grad / len(batch.y)   # of the mean loss (M+)

    def end_epoch(self, epoch: int) -> None:
        device = self.ctx.input_std.device
        ex, steps, approx, true, checks, rem, passes = self.ctx.all_reduce_sum(self.epoch.as_tensor(device)).tolist()
        self.last = {
            "approx_share": approx / max(steps, 1),            # share of attack steps on an approximated gradient
            "mean_remainder": rem / max(checks, 1),           # mean rho over the checks
            "true_grads_per_example": true / max(ex, 1),
            "attack_passes_per_example": passes / max(ex, 1),
        }
        self.epoch = AttackStats()

    def state(self) -> dict:
        return dict(self.last)

    def state_dict(self) -> dict:
        return {} if self.control is None else {"adapt": self.control.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.control is not None and state.get("adapt"):
            self.control.load_state_dict(state["adapt"], self.ctx.input_std.device)
