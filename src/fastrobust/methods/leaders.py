"""The FastAT Benchmark's leaders (docs/methods.md, "The FastAT Benchmark's leaders"): single-step methods
each with its own start, attack objective or regulariser, written from their papers' rules.

None of them is attack x loss x schedule, and each is therefore a :class:`Method` of its own:

* GradAlign's regulariser is a second input gradient at another point, kept in the graph (double backprop);
* NuAT and GAT attack with an objective that alternates by minibatch and needs the clean logits, and their
  weight step reuses the clean forward the attack already made (one clean forward instead of two);
* FGSM-RS-CS adds a term on the loss at the random start, whose graph the attack's forward already holds,
  and whose sign depends on the last epoch's mean of that loss;
* ZeroGrad's masked step could be a step of ``ascend`` (it is), but its attack alone would not change the
  composition; it is here with the others for one place.

Every attack step runs :func:`fastrobust.attacks.kernel.ascend` where the graph need not be kept, and
reports passes as the contract counts them (forward 1/3, backward 2/3; a double backprop's second backward
through the model is one more backward, 2/3). All are one step: the collapse guard cannot strengthen them
(:meth:`strengthen` returns None).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..attacks import preserved_mode
from ..attacks.compiled import unwrapped
from ..attacks.kernel import ascend, input_grad, summed_ce
from ..attacks.projection import per_example
from ..errors import ConfigError
from .base import BACKWARD, FORWARD, Batch, Method, Param, StepOutput
from .inputs import _unprojected
from .losses import cross_entropy


class SingleStep(Method):
    """What the leaders share: a default step ``alpha_factor`` x eps, no strengthening, and a state of a
    minibatch counter and the epochs done (restored by ``load_state_dict``)."""

    alpha_factor: float = 1.0

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.boost = 0
        self.counter = 0     # minibatches trained (the alternation of NuAT and GAT)
        self.epoch = 0       # epochs done

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        return cls.alpha_factor * eps

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch = epoch + 1

    def strengthen(self, min_level: int = 1) -> str | None:
        return None          # one attack step by design: no level to raise

    def state_dict(self) -> dict:
        return {"counter": self.counter, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.counter, self.epoch = state["counter"], state["epoch"]


# ---- GradAlign ---------------------------------------------------------------------------------------

class GradAlign(SingleStep):
    name = "gradalign"
    description = ("GradAlign (Andriushchenko & Flammarion, NeurIPS 2020): FGSM from x (zero start, step alpha, "
                   "default eps) and the regulariser lambda (1 - cos(grad at x, grad at x + eta)), eta uniform in "
                   "the eps-ball, through a double backprop. Cost 11/3.")
    params = (Param("lam", float, 0.2, "lambda, the weight of the gradient-alignment term (the paper's 0.2 at CIFAR-10 "
                    "eps 8/255; it grows with eps)", minimum=0.0),)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n = len(x)
        with torch.enable_grad():
            # FGSM from x: its input gradient at x is also the regulariser's first gradient (the same point)
            delta, grad1, passes = ascend(model, x, torch.zeros_like(x), 1, batch.alpha, eps, tm, y, keep_grad=True)
            logits = model((x + delta).clamp(0, 1))
            loss = cross_entropy(logits, y, self.ctx.label_smoothing)
            passes += n * FORWARD
            if self.lam > 0:
                noisy = (x + tm.random_delta(x, eps)).requires_grad_(True)
                (grad2,) = torch.autograd.grad(summed_ce(model(noisy), y), noisy, create_graph=True)
                loss = loss + self.lam * (1 - _cosine(grad1, grad2))
                passes += n * (FORWARD + BACKWARD + BACKWARD)   # forward, backward with graph, its backward
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * BACKWARD)


def _cosine(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The mean cosine of the per-example gradients, over the examples where both are non-zero (as the paper's
    code); 1 (no regularisation) when there is none."""
    a, b = g1.flatten(1), g2.flatten(1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    keep = (na > 0) & (nb > 0)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-30)
    return torch.where(keep, cos, torch.zeros_like(cos)).sum() / keep.sum().clamp_min(1) + (~keep.any()).float()


# ---- ZeroGrad ----------------------------------------------------------------------------------------

class ZeroGrad(SingleStep):
    name = "zerograd"
    description = ("ZeroGrad (Golgooni et al., Machine Learning with Applications 2023; arXiv 2021): FGSM from a "
                   "uniform random start whose input-gradient components below each example's q-quantile of "
                   "|gradient| are zeroed before the step (size alpha, default 2 eps), projected onto the eps-ball. "
                   "Cost 2.")
    params = (Param("q", float, 0.35, "the per-example quantile of |input gradient| below which its components are "
                    "zeroed", minimum=0.0),)
    alpha_factor = 2.0

    @classmethod
    def check_config(cls, eps, alpha, params):
        if not params["q"] < 1:
            raise ConfigError(f"method zerograd: q must be below 1 (the share of components zeroed), got {params['q']}")

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        q = self.q

        def masked_step(delta, grad, alpha, x, eps):
            return tm.step(delta, grad * (grad.abs() >= _quantile_rows(grad.abs(), q)), alpha, x, eps)

        with torch.enable_grad():
            delta, _, passes = ascend(model, x, tm.random_delta(x, eps), 1, batch.alpha, eps, tm, y, step=masked_step)
        logits = model(x + delta)
        loss = cross_entropy(logits, y, self.ctx.label_smoothing)
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + len(x))


def _quantile_rows(a: torch.Tensor, q: float) -> torch.Tensor:
    """Each example's q-quantile of ``a`` (linear interpolation, as ``torch.quantile``), shaped to broadcast;
    by order statistics, so without ``torch.quantile``'s size limit."""
    flat = a.flatten(1).float()
    d = flat.shape[1]
    pos = q * (d - 1)
    lo = int(pos)
    low = flat.kthvalue(lo + 1, dim=1).values
    high = flat.kthvalue(min(lo + 2, d), dim=1).values if pos > lo else low
    return per_example((low + (pos - lo) * (high - low)).to(a.dtype), a)


# ---- NuAT and GAT ------------------------------------------------------------------------------------

class CleanGuided(SingleStep):
    """NuAT's and GAT's minibatch: a Bernoulli start of +-eps/2 per component, one signed step of size alpha
    (default eps) on CE + lambda_attack x the regulariser between the clean and the perturbed outputs (lambda_attack
    on odd minibatches, 0 on even ones, as the papers alternate), projected; then one weight step on
    CE(f(x), y) + lambda x the same regulariser between f(x) and f(x_adv). The clean forward, in train mode, is
    made once: detached it is the attack's target, with its graph the weight step's term (the weights do not
    change between). Cost 1/3 (clean) + 1 (attack) + 1/3 (x_adv) + 4/3 (the two backwards) = 3; 1 while lambda
    is 0 (NuAT's first epoch: clean training, and no attack is run, since no loss would read it)."""

    attack_eval = False

    def reg(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """The regulariser summed over the batch (divided by n for the weight step's mean)."""
        raise NotImplementedError

    def lam_now(self) -> float:
        raise NotImplementedError

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n, lam = len(x), self.lam_now()
        clean = model(x)
        if not lam:   # NuAT's first epoch: the weight step is CE(f(x), y) alone and reads no attack: none is run
            loss = cross_entropy(clean, y, self.ctx.label_smoothing)
            step(loss)
            self.counter += 1
            return StepOutput(loss.detach(), clean.detach(), float(n))
        target = clean.detach()
        lam_attack = lam if self.counter % 2 == 1 else 0.0

        def objective(logits, y):
            ce = summed_ce(logits, y)
            return ce + lam_attack * self.reg(target, logits) if lam_attack else ce

        start = tm.project(0.5 * eps * torch.randint_like(x, 2).mul_(2).sub_(1), x, eps)
        with preserved_mode(model, self.attack_eval), torch.enable_grad():
            delta, _, passes = ascend(model, x, start, 1, batch.alpha, eps, tm, y, objective=objective)
        logits = model(x + delta)
        loss = cross_entropy(clean, y, self.ctx.label_smoothing) + lam * self.reg(clean, logits) / n
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * (2 * FORWARD + 2 * BACKWARD))


class NuAT(CleanGuided):
    name = "nuat"
    description = ("NuAT (Sriramanan et al., NeurIPS 2021): Bernoulli +-eps/2 start, one step on CE + lambda "
                   "||f(x_adv) - f(x)||_* (the nuclear norm of the batch's logit differences; every other "
                   "minibatch), then CE(f(x), y) + lambda ||f(x_adv) - f(x)||_* / n; lambda rises linearly from 0 "
                   "by lam_max/epochs per epoch. Cost 3 (1 in the first epoch, lambda 0: clean training, no "
                   "attack).")
    params = (Param("lam_max", float, 4.0, "lambda after the last epoch (it rises by lam_max/epochs per epoch from "
                    "0); the FastAT Benchmark's CIFAR-10 value", minimum=0.0),)

    def lam_now(self):
        return self.lam_max * self.epoch / self.ctx.epochs

    def reg(self, clean, adv):
        return torch.linalg.matrix_norm(adv.float() - clean.float(), ord="nuc")

    def state(self):
        return {"lambda": self.lam_max * (self.epoch - 1) / self.ctx.epochs} if self.epoch else {}


class GAT(CleanGuided):
    name = "gat"
    description = ("GAT, guided adversarial training (Sriramanan et al., NeurIPS 2020): Bernoulli +-eps/2 start, "
                   "one step (model in eval mode) on CE + lambda ||p(x) - p(x_adv)||^2 (softmax outputs; every "
                   "other minibatch), then CE(f(x), y) + lambda ||p(x) - p(x_adv)||^2 (mean over the batch). "
                   "Cost 3.")
    params = (Param("lam", float, 10.0, "lambda, the weight of the squared L2 distance of the softmax outputs",
                    minimum=0.0),)
    attack_eval = True

    def lam_now(self):
        return self.lam

    def reg(self, clean, adv):
        return (F.softmax(clean.float(), 1) - F.softmax(adv.float(), 1)).pow(2).sum()


# ---- FGSM-RS-CS (ConvergeSmooth) ---------------------------------------------------------------------

CS_PARAMS = (Param("gamma", float, 0.03, "the largest change of the constrained loss from the last epoch's mean "
                   "that goes unconstrained", minimum=0.0),
             Param("w", float, 1.0, "the weight of the constraint term", minimum=0.0),
             Param("smooth", float, 0.6, "the target probability of the true class (the rest shared equally)",
                   minimum=0.0),
             Param("stride", int, 1, "the constraint applies from epoch stride + 2 on (1-based), up to the last "
                   "stride epochs", minimum=0))


class ConvergeSmooth:
    """ConvergeSmooth's oscillatory constraint on a minibatch loss l (Zhao et al., ICCV 2023): where l differs
    from the last epoch's mean L by more than ``gamma``, the weight step's loss gets +w l (l above L) or -w l
    (below), in the epochs t (0-based) with stride < t < epochs - stride. The sign is decided on the device and
    the epoch's mean is summed there (no host read); the mean is all-reduced once per epoch."""

    def __init__(self, gamma: float, w: float, stride: int, epochs: int, device) -> None:
        self.gamma, self.w, self.stride, self.epochs = gamma, w, stride, epochs
        self.prev = None          # the last epoch's mean of l
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)

    def active(self, epoch: int) -> bool:
        return self.prev is not None and self.stride < epoch < self.epochs - self.stride

    def term(self, l: torch.Tensor, n: int, epoch: int) -> torch.Tensor | None:
        """The constraint's term for this minibatch's mean loss ``l`` over ``n`` examples (None where it does not
        apply); ``l`` also enters this epoch's mean."""
        self.sums[0].add_(l.detach().double(), alpha=n)
        self.sums[1].add_(n)
        if not self.active(epoch):
            return None
        change = l.detach() - self.prev
        return self.w * torch.where(change.abs() > self.gamma, change.sign(), torch.zeros_like(change)) * l

    def end_epoch(self, all_reduce_sum) -> None:
        total, seen = all_reduce_sum(self.sums).tolist()
        self.sums = torch.zeros_like(self.sums)
        if seen:
            self.prev = total / seen

    def state_dict(self) -> dict:
        return {"prev": self.prev, "sums": self.sums.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.prev, self.sums = state["prev"], state["sums"].to(self.sums.device)


def _smoothed_targets(y: torch.Tensor, classes: int, p_y: float, label_smoothing: float) -> torch.Tensor:
    """p_y on the true class, the rest shared equally, with the run's label smoothing on top."""
    rest = (1 - p_y) / max(classes - 1, 1)
    targets = torch.full((len(y), classes), rest, device=y.device).scatter_(1, y[:, None], p_y)
    return _label_smoothed(targets, label_smoothing)


class Smoothed:
    """What FGSM-RS-CS and FGSM-MEP-CS share: a :class:`ConvergeSmooth` ``cs`` (built from the method's own
    parameters), its epoch mean all-reduced at each epoch's end and shown as the state ``state_name``."""

    state_name = "loss"

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.cs = ConvergeSmooth(self.gamma, self.w, self.stride, ctx.epochs, ctx.input_std.device)

    def on_epoch_end(self, epoch):
        super().on_epoch_end(epoch)
        self.cs.end_epoch(self.ctx.all_reduce_sum)

    def state(self):
        return {self.state_name: self.cs.prev} if self.cs.prev is not None else {}


class FGSMRSCS(Smoothed, SingleStep):
    name = "fgsm-rs-cs"
    description = ("FGSM-RS-CS, ConvergeSmooth on FGSM-RS (Zhao et al., ICCV 2023): one step of size alpha "
                   "(default eps) from x + eta, eta uniform in the eps-ball, not projected back (as the authors' "
                   "code); CE on targets smoothed to p_y = smooth (reported as KL: CE less the targets' entropy), "
                   "plus the oscillatory constraint: where the minibatch's loss at x + eta, l, differs from the last "
                   "epoch's mean by more than gamma, +w l (above) or -w l (below). Cost 2, 8/3 in the epochs where "
                   "the constraint applies.")
    params = CS_PARAMS
    state_name = "start_loss"

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n = len(x)
        start = (x + tm.random_delta(x, eps)).detach()
        kept = {}

        def gradient(k, x0, delta, y):   # the start's forward, its graph kept for the constraint
            point = (x0 + delta).requires_grad_(True)
            kept["logits"] = logits = model(point)
            (grad,) = torch.autograd.grad(summed_ce(logits, y), point, retain_graph=True)
            return grad, logits

        with torch.enable_grad():
            point, _, passes = ascend(model, torch.zeros_like(x), start, 1, batch.alpha, eps, tm, y,
                                      gradient=gradient, step=_unprojected(tm))
        logits = model(point.clamp_(0, 1))
        targets = _smoothed_targets(y, logits.shape[1], self.smooth, self.ctx.label_smoothing)
        loss = _soft_ce(logits, targets)
        passes += n * (FORWARD + BACKWARD)
        term = self.cs.term(_soft_ce(kept["logits"], targets), n, self.epoch)
        if term is not None:
            loss = loss + term
            passes += n * BACKWARD      # the backward through the start's forward (also when its sign is 0)
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes)

    def state_dict(self):
        return {**super().state_dict(), **self.cs.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.cs.load_state_dict(state)


def _label_smoothed(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """A method's own soft targets with the run's ``--label-smoothing`` S on top: (1 - S) t + S / classes, what
    torch's cross-entropy does with soft targets and a label smoothing (and so the FastAT Benchmark's)."""
    return targets * (1 - smoothing) + smoothing / targets.shape[1] if smoothing else targets


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets less their entropy, in float32: KL(targets || softmax(logits)),
    the same gradient as the cross-entropy, and 0 at its optimum (the reported loss falls to 0, not to the
    targets' entropy)."""
    log_t = targets.clamp_min(1e-30).log()
    return (targets * (log_t - F.log_softmax(logits.float(), 1))).sum(1).mean()


# ---- LIET --------------------------------------------------------------------------------------------

class LIET(SingleStep):
    """Its start is built from a per-class "label information" perturbation refreshed every ``refresh``
    minibatches, and its loss has a Jensen-Shannon term between the start's and x_adv's outputs: neither
    an attack start nor a loss of the composition alone (the loss needs the start's forward)."""

    name = "liet"
    description = ("LIET, label information elimination (Pan et al., ICCV 2025): the start is +-LI[y] (one sign "
                   "per minibatch), LI[c] = eps sign(grad of CE(f(0.5 gray image), c)) in eval mode, refreshed every "
                   "`refresh` minibatches of an epoch, with a share U(mask_min, mask_max) of its components replaced "
                   "by uniform noise; one step of alpha (default eps); loss: CE on randomly smoothed targets "
                   "(true class 1 - smoothing, the rest a random split of smoothing) + lambda_t JS(p(start), "
                   "p(x_adv)), lambda_t = lam (t+1)/epochs. Cost 8/3, + C (classes) per refresh.")
    params = (Param("lam", float, 100.0, "lambda after the last epoch (lambda_t = lam (t+1)/epochs in epoch t, "
                    "0-based)", minimum=0.0),
              Param("smoothing", float, 0.6, "the randomised label smoothing's mass off the true class",
                    minimum=0.0),
              Param("mask_min", float, 0.1, "the least share of the start's components drawn uniformly instead",
                    minimum=0.0),
              Param("mask_max", float, 0.5, "the largest such share", minimum=0.0),
              Param("refresh", int, 20, "minibatches between refreshes of the label-information perturbation "
                    "(and at each epoch's first)", minimum=1))

    @classmethod
    def check_config(cls, eps, alpha, params):
        if not params["mask_min"] <= params["mask_max"] <= 1 or not params["smoothing"] < 1:
            raise ConfigError("method liet: needs mask_min <= mask_max <= 1 and smoothing < 1")

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.in_epoch = 0      # minibatches of this epoch so far
        self.li = None         # (classes, *image) the label-information perturbation

    def on_epoch_end(self, epoch):
        super().on_epoch_end(epoch)
        self.in_epoch = 0

    def lam_now(self) -> float:
        return self.lam * (self.epoch + 1) / self.ctx.epochs

    def _targets(self, y: torch.Tensor, classes: int) -> torch.Tensor:
        """The randomised label smoothing: 1 - s on the true class, s split at random (uniform weights) over
        the others."""
        s = self.smoothing
        true = F.one_hot(y, classes).bool()
        rest = torch.rand((len(y), classes), device=y.device).masked_fill_(true, 0)
        rest = rest / rest.sum(1, keepdim=True).clamp_min(1e-30) * s
        return rest.masked_fill_(true, 1 - s)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n, classes, passes = len(x), self.ctx.num_classes, 0.0
        if self.in_epoch % self.refresh == 0 or self.li is None or self.li.shape[1:] != x.shape[1:]:
            gray = torch.full((classes, *x.shape[1:]), 0.5, device=x.device, dtype=x.dtype)
            with preserved_mode(model, True), torch.enable_grad():
                labels = torch.arange(classes, device=x.device)
                grad = _soft_ce_grad(model, gray, self._targets(labels, classes))
            self.li = tm.direction(grad)   # L-inf: the sign; times eps below (the current eps: it may ramp)
            passes += classes
        # the reference's rule: above CIFAR's 8/255 (L-inf), noise of 2 eps and a step not projected back
        wide = tm.name == "linf" and eps > 8 / 255
        delta = eps * self.li.to(x.dtype)[y]
        noise = tm.start(x, 2 * eps if wide else eps, None)    # L-inf: uniform in [-eps, eps] per component
        # the minibatch's mask share and sign, drawn on the device (no host read)
        share = self.mask_min + torch.rand((), device=x.device) * (self.mask_max - self.mask_min)
        delta = torch.where(torch.rand_like(x) < share, noise, delta)
        delta = torch.where(torch.rand((), device=x.device) < 0.5, -delta, delta)
        kept = {}

        def gradient(k, x0, d, against):   # the start's forward, its graph kept for the JS term
            point = (x0 + d).clamp(0, 1).requires_grad_(True)
            kept["logits"] = logits = model(point)
            # each use of the smoothed loss draws its own targets (as the reference)
            (g,) = torch.autograd.grad(_soft_ce(logits, self._targets(y, classes)) * n, point, retain_graph=True)
            return g, logits

        step_fn = _unprojected(tm) if wide else None
        with torch.enable_grad():
            if wide:
                point, _, spent = ascend(model, torch.zeros_like(x), (x + delta).clamp(0, 1), 1, batch.alpha, eps,
                                         tm, y, gradient=gradient, step=step_fn)
                x_adv = point.clamp(0, 1)
            else:
                start = tm.project(delta, x, eps)     # L-inf: only the pixel box (|delta| <= eps already)
                d, _, spent = ascend(model, x, start, 1, batch.alpha, eps, tm, y, gradient=gradient)
                x_adv = x + d
        logits = model(x_adv)
        targets = _label_smoothed(self._targets(y, classes), self.ctx.label_smoothing)
        loss = _soft_ce(logits, targets) + self.lam_now() * _js(kept["logits"], logits)
        step(loss)
        self.counter += 1
        self.in_epoch += 1
        return StepOutput(loss.detach(), logits.detach(), passes + spent + n * (FORWARD + 2 * BACKWARD))

    def state(self):
        return {"lambda": self.lam * self.epoch / self.ctx.epochs} if self.epoch else {}

    def state_dict(self):
        return {**super().state_dict(), "in_epoch": self.in_epoch,
                "li": None if self.li is None else self.li.detach().cpu()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.in_epoch, self.li = state["in_epoch"], state["li"]
        if self.li is not None:
            self.li = self.li.to(self.ctx.input_std.device)


def _soft_ce_grad(model, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The input gradient of the summed cross-entropy against soft targets."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_soft_ce(model(x), targets) * len(x), x)
    return grad


def _js(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon divergence of the two softmax outputs, mean over the batch, in float32."""
    p, q = F.softmax(logits_p.float(), 1), F.softmax(logits_q.float(), 1)
    log_m = ((p + q) / 2).clamp_min(1e-30).log()
    kl = lambda a: (a * (a.clamp_min(1e-30).log() - log_m)).sum(1)   # noqa: E731
    return ((kl(p) + kl(q)) / 2).mean()


# ---- the UAP family: FGSM-UAP and FGSM-CUAP ----------------------------------------------------------

def _step_keeping_start(model, x, start, batch: Batch, tm, y):
    """One signed step from ``start`` (the UAP family's and FGSM-PGI's): returns the perturbation, the passes, and
    the start's logits (their graph kept for the regulariser) and input gradient."""
    kept = {}

    def gradient(k, x0, d, against):
        point = (x0 + d).requires_grad_(True)
        kept["logits"] = logits = model(point)
        (g,) = torch.autograd.grad(summed_ce(logits, against), point, retain_graph=True)
        kept["grad"] = g.detach().clone()
        return g, logits

    with torch.enable_grad():
        delta, _, passes = ascend(model, x, start, 1, batch.alpha, batch.eps, tm, y, gradient=gradient)
    return delta, passes, kept


def _ce_and_mse_to_start(logits, y, kept: dict, lam: float, smoothing: float) -> torch.Tensor:
    """CE on the adversarial logits + ``lam`` x their mean squared distance to the start's logits."""
    return cross_entropy(logits, y, smoothing) + lam * (logits.float() - kept["logits"].float()).pow(2).mean()


class FGSMUAP(SingleStep):
    """Its start is a universal perturbation (one, or one per class) that the attack's own input gradients update
    after every minibatch, and its loss needs the start's forward (an MSE between the start's and x_adv's
    logits): a start with state fed by the attack, and a loss of both forwards, which the composition has not."""

    name = "fgsm-uap"
    description = ("FGSM-UAP (AAAI 2024, as the FastAT Benchmark cites it): FGSM (step alpha, default eps, "
                   "projected) from x + U, U a universal perturbation of radius uap x eps, projected onto the "
                   "eps-ball; loss CE(f(x_adv)) + lambda MSE(f(x_adv), f(x + U)); after each minibatch U moves by "
                   "uap x eps along the sign of a momentum (decay) of the batch-mean input gradient, each "
                   "normalised by the batch's L1 norm. Cost 8/3.")
    params = (Param("lam", float, 10.0, "lambda, the weight of the MSE between the start's and x_adv's logits",
                    minimum=0.0),
              Param("uap", float, 1.25, "the universal perturbation's radius in units of eps (the benchmark's "
                    "10/255 at 8/255)", minimum=0.0),
              Param("decay", float, 0.3, "the momentum's decay", minimum=0.0))
    classwise = False

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.u = self.momentum = None     # (groups, *image): one group, or one per class

    def _ball(self, u: torch.Tensor, radius: float) -> torch.Tensor:
        if self.ctx.threat.name == "linf":
            return u.clamp(-radius, radius)
        norms = u.flatten(1).norm(dim=1).clamp_min(1e-12)
        return u * per_example((radius / norms).clamp(max=1.0), u)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n, radius = len(x), self.uap * eps
        groups = self.ctx.num_classes if self.classwise else 1
        if self.u is None or self.u.shape[1:] != x.shape[1:]:
            shape = (groups, *x.shape[1:])
            self.u = radius * tm.direction(2 * torch.rand(shape, device=x.device, dtype=x.dtype) - 1)
            self.momentum = torch.zeros(shape, device=x.device, dtype=x.dtype)
        group = y if self.classwise else torch.zeros_like(y)
        start = tm.project(self.u.to(x.dtype)[group], x, eps)
        delta, passes, kept = _step_keeping_start(model, x, start, batch, tm, y)
        logits = model(x + delta)
        loss = _ce_and_mse_to_start(logits, y, kept, self.lam, self.ctx.label_smoothing)
        step(loss)
        self._update(kept["grad"], group, groups, radius)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * (FORWARD + 2 * BACKWARD))

    def _update(self, grad: torch.Tensor, group: torch.Tensor, groups: int, radius: float) -> None:
        """Each group present in the minibatch (in every process): momentum = its mean normalised gradient +
        decay x momentum; U moves by radius along the momentum's direction, within the ball of that radius."""
        g = (grad / grad.abs().sum().clamp_min(1e-30)).flatten(1)
        sums = torch.zeros((groups, g.shape[1]), device=g.device, dtype=torch.float32).index_add_(0, group, g.float())
        counts = torch.bincount(group, minlength=groups).to(sums.dtype)
        packed = self.ctx.all_reduce_sum(torch.cat([sums, counts[:, None]], 1))
        sums, counts = packed[:, :-1], packed[:, -1]
        present = per_example(counts > 0, self.u)
        mean = (sums / counts.clamp_min(1)[:, None]).view_as(self.u).to(self.u.dtype)
        self.momentum = torch.where(present, mean + self.decay * self.momentum, self.momentum)
        moved = self._ball(self.u + radius * self.ctx.threat.direction(self.momentum), radius)
        self.u = torch.where(present, moved, self.u)

    def state_dict(self):
        keep = lambda t: None if t is None else t.detach().cpu()   # noqa: E731
        return {**super().state_dict(), "u": keep(self.u), "momentum": keep(self.momentum)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        device = self.ctx.input_std.device
        self.u = None if state["u"] is None else state["u"].to(device)
        self.momentum = None if state["momentum"] is None else state["momentum"].to(device)


class FGSMCUAP(FGSMUAP):
    """FGSM-UAP with one universal perturbation (and momentum) per class."""

    name = "fgsm-cuap"
    description = ("FGSM-CUAP (AAAI 2024, as the FastAT Benchmark cites it): FGSM-UAP with one universal "
                   "perturbation and momentum per class (the start of x is its class's; after each minibatch each "
                   "class present moves by the mean normalised gradient of its examples). Cost 8/3.")
    classwise = True


def _classifier_layer(model: torch.nn.Module, num_classes: int) -> torch.nn.Linear:
    """The model's last ``nn.Linear`` with ``num_classes`` outputs (else its last ``nn.Linear``): the classifier
    whose input is the penultimate feature (torchvision's ``fc`` or ``classifier[-1]``, timm's ``head.fc``)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    heads = [m for m in linears if m.out_features == num_classes] or linears
    if not heads:
        raise ConfigError("method fgsm-fuap picks a universal perturbation from the model's penultimate features, "
                          "the input of its last nn.Linear layer, and this model has no nn.Linear: use fgsm-uap or "
                          "fgsm-cuap, which need no features")
    return heads[-1]


class FGSMFUAP(FGSMUAP):
    """FGSM-UAP with ``uaps`` universal perturbations, an example's chosen by a small head on the model's
    penultimate features (of x plus uniform noise): the head is trained alongside (Adam, CE against the labels)
    and its hidden unit of largest pre-activation names the perturbation. The head and its optimizer are state
    of the method, not of the model: they are kept in last.pt (exact resume) and not in best.pt or an export."""

    name = "fgsm-fuap"
    description = ("FGSM-FUAP (AAAI 2024, as the FastAT Benchmark runs it): FGSM (step alpha, default eps) from "
                   "x + noise + U_k, noise uniform in the eps-ball, U_k one of `uaps` universal perturbations of "
                   "radius uap x eps, k the argmax of a head Linear(features, uaps) on the model's penultimate "
                   "features of x + noise (the head, with ReLU and Linear(uaps, classes), learns the labels by "
                   "Adam); loss and the update of U_k as FGSM-UAP's, per perturbation chosen. Cost 3.")
    params = FGSMUAP.params + (Param("uaps", int, 50, "how many universal perturbations (the head's width)",
                                     minimum=1),
                               Param("head_lr", float, 1e-3, "the head's Adam learning rate", minimum=0.0))

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.head = self.head_opt = self.layer = None

    @classmethod
    def check_model(cls, model, params, num_classes):
        _classifier_layer(model, num_classes)

    def _make_head(self, features: int, device) -> None:
        self.head = torch.nn.Sequential(torch.nn.Linear(features, self.uaps, device=device), torch.nn.ReLU(),
                                        torch.nn.Linear(self.uaps, self.ctx.num_classes, device=device))
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=self.head_lr)

    def _mean(self, tensors) -> list[torch.Tensor]:
        """The processes' mean of each tensor (one collective; the identity on one process)."""
        flat = torch.cat([t.detach().flatten().float() for t in tensors])
        packed = self.ctx.all_reduce_sum(torch.cat([flat, flat.new_ones(1)]))
        parts = (packed[:-1] / packed[-1]).split([t.numel() for t in tensors])
        return [part.view_as(t).to(t.dtype) for part, t in zip(parts, tensors)]

    def _choose(self, model, x_noisy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The perturbation of each example (the head's argmax); one step of the head on CE against ``y``."""
        if self.layer is None:
            self.layer = _classifier_layer(unwrapped(model), self.ctx.num_classes)
        seen = {}
        handle = self.layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("f", args[0].detach()))
        try:
            with torch.no_grad():      # in the model's training mode, as the benchmark does
                unwrapped(model)(x_noisy)
        finally:
            handle.remove()
        features = seen["f"].flatten(1).float()
        if self.head is None:      # every process starts from the same head: the processes' mean
            self._make_head(features.shape[1], features.device)
            with torch.no_grad():
                for p, mean in zip(self.head.parameters(), self._mean(list(self.head.parameters()))):
                    p.copy_(mean)
        with torch.enable_grad():
            hidden = self.head[0](features)
            loss = cross_entropy(self.head[2](F.relu(hidden)), y, self.ctx.label_smoothing)
            grads = torch.autograd.grad(loss, list(self.head.parameters()))
        for p, g in zip(self.head.parameters(), self._mean(grads)):   # one head in every process
            p.grad = g
        self.head_opt.step()
        self.head_opt.zero_grad(set_to_none=True)
        return hidden.detach().argmax(1)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n, radius = len(x), self.uap * eps
        noise = (x + tm.start(x, eps, None)).clamp(0, 1) - x
        k = self._choose(model, x + noise, y)
        if self.u is None or self.u.shape[1:] != x.shape[1:]:
            shape = (self.uaps, *x.shape[1:])
            self.u = radius * tm.direction(2 * torch.rand(shape, device=x.device, dtype=x.dtype) - 1)
            self.momentum = torch.zeros(shape, device=x.device, dtype=x.dtype)
        start = tm.project(noise + self.u.to(x.dtype)[k], x, eps)
        delta, passes, kept = _step_keeping_start(model, x, start, batch, tm, y)
        logits = model(x + delta)
        loss = _ce_and_mse_to_start(logits, y, kept, self.lam, self.ctx.label_smoothing)
        step(loss)
        self._update(kept["grad"], k, self.uaps, radius)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * (2 * FORWARD + 2 * BACKWARD))

    def state_dict(self):
        return {**super().state_dict(), "head": None if self.head is None else self.head.state_dict(),
                "head_opt": None if self.head is None else self.head_opt.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if state.get("head") is not None:
            self._make_head(state["head"]["0.weight"].shape[1], self.ctx.input_std.device)
            self.head.load_state_dict(state["head"])
            self.head_opt.load_state_dict(state["head_opt"])


# ---- AAER: N-AAER and RS-AAER ----------------------------------------------------------------------------

class NAAER(SingleStep):
    """Its regulariser needs each example's loss and logits at the start and after the step (which examples
    the step made *less* adversarial) and trains through the second of them: a loss of both forwards."""

    name = "n-aaer"
    description = ("N-AAER (Lin et al., NeurIPS 2023, Abnormal Adversarial Examples Regularization, as the FastAT "
                   "Benchmark runs it on N-FGSM): one step (alpha, default eps) from x + eta, eta uniform in "
                   "noise x eps (2), not projected back; CE(f(x_adv)) + lam1 (share of abnormal examples, whose loss "
                   "the step lowered) x (lam2 x their mean loss decrease + lam3 x max(0, their mean |f(x_adv) - "
                   "f(x + eta)|^2 - the normal examples')). Cost 2.")
    params = (Param("lam1", float, 1.0, "lambda1, the weight of the regulariser (times the abnormal share)",
                    minimum=0.0),
              Param("lam2", float, 1.5, "lambda2, the weight of the abnormal examples' loss decrease", minimum=0.0),
              Param("lam3", float, 0.15, "lambda3, the weight of their extra logit variation", minimum=0.0),
              Param("noise", float, 2.0, "the random start's radius in units of eps", minimum=0.0),
              Param("project", bool, False, "project the step back onto the eps-ball"))

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n = len(x)
        start = tm.project(tm.start(x, self.noise * eps, None), x, self.noise * eps)
        kept = {}

        def gradient(k, x0, d, against):   # the start's per-example losses and logits (no graph kept)
            point = (x0 + d).requires_grad_(True)
            logits = model(point)
            losses = F.cross_entropy(logits, against, reduction="none")
            (g,) = torch.autograd.grad(losses.sum(), point)
            kept["logits"], kept["losses"] = logits.detach(), losses.detach()
            return g, logits

        with torch.enable_grad():
            delta, _, passes = ascend(model, x, start, 1, batch.alpha, eps, tm, y, gradient=gradient,
                                      step=None if self.project else _unprojected(tm))
        logits = model((x + delta).clamp(0, 1))
        after = F.cross_entropy(logits, y, reduction="none")
        abnormal = (kept["losses"] > after.detach()).to(after.dtype)   # the step lowered the loss
        n_abnormal = abnormal.sum()
        n_normal = n - n_abnormal
        variation = (logits.float() - kept["logits"].float()).pow(2).sum(1)
        decrease = (abnormal * (kept["losses"] - after)).sum() / n_abnormal.clamp_min(1)
        extra = ((abnormal * variation).sum() / n_abnormal.clamp_min(1)
                 - ((1 - abnormal) * variation).sum().detach() / n_normal.clamp_min(1)).clamp(-100, 100)
        both = ((n_abnormal > 0) & (n_normal > 0)).to(after.dtype)     # the regulariser needs both kinds
        reg = both * self.lam1 * n_abnormal / n * (self.lam2 * decrease + self.lam3 * extra.clamp_min(0))
        loss = cross_entropy(logits, y, self.ctx.label_smoothing) + reg
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * (FORWARD + BACKWARD))


class RSAAER(NAAER):
    """AAER on FGSM-RS: a uniform start in the eps-ball, a step of 1.25 eps projected back."""

    name = "rs-aaer"
    description = ("RS-AAER (Lin et al., NeurIPS 2023, as the FastAT Benchmark runs it on FGSM-RS): as n-aaer with "
                   "a start uniform in the eps-ball, a step of alpha (default 1.25 eps) projected back, and lam2 2.5, "
                   "lam3 1.5. Cost 2.")
    alpha_factor = 1.25
    params = tuple(Param(p.name, p.type, {"lam2": 2.5, "lam3": 1.5, "noise": 1.0, "project": True}.get(p.name, p.default),
                         p.help) if p.name in ("lam2", "lam3", "noise", "project") else p for p in NAAER.params)


# ---- ELLE --------------------------------------------------------------------------------------------

class ELLE(SingleStep):
    """Its regulariser is a second loss on other points (three per example, around x, not x_adv), trained
    through together with CE on x_adv: a loss the composition's single attack point cannot give."""

    name = "elle"
    description = ("ELLE (Abad Rocamora et al., ICLR 2024, Efficient Local Linearity rEgularization, as the FastAT "
                   "Benchmark runs it): FGSM (step alpha, default 1.25 eps) from a uniform start, not projected back "
                   "to the eps-ball; loss CE(f(x_adv)) + lam x mean over the batch of (l(x_c) - ((1 - a) l(x_a) + a "
                   "l(x_b)))^2, x_a and x_b uniform in the eps-ball, x_c = (1 - a) x_a + a x_b, a uniform in [0, 1], "
                   "l the per-example CE. Cost 5.")
    alpha_factor = 1.25
    params = (Param("lam", float, 1.0, "lambda, the weight of the local-linearity error (constant, as the "
                    "benchmark runs it; the paper's adaptive ELLE-A is not built)", minimum=0.0),
              Param("project", bool, False, "project the step back onto the eps-ball"))

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n = len(x)
        start = tm.project(tm.start(x, eps, None), x, eps)
        with torch.enable_grad():
            delta, _, passes = ascend(model, x, start, 1, batch.alpha, eps, tm, y,
                                      step=None if self.project else _unprojected(tm))
        logits = model((x + delta).clamp(0, 1))
        ends = (x.repeat(2, *[1] * (x.dim() - 1)) + tm.start(torch.cat([x, x]), eps, None)).clamp(0, 1)
        a = per_example(torch.rand(n, device=x.device, dtype=x.dtype), x)
        middle = (1 - a) * ends[:n] + a * ends[n:]
        losses = F.cross_entropy(model(torch.cat([ends, middle])).float(), y.repeat(3), reduction="none")
        a = a.flatten()
        error = (losses[2 * n:] - ((1 - a) * losses[:n] + a * losses[n:2 * n])).pow(2).mean()
        loss = cross_entropy(logits, y, self.ctx.label_smoothing) + self.lam * error
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + 4 * n * (FORWARD + BACKWARD))


# ---- per-example priors: FGSM-PGI and FGSM-PCO (the engine gives the examples' indices, Batch.index) --------

class ExampleMemory:
    """Per-example tensors kept across epochs, addressed by the examples' training-split rows (``batch.index``).

    A table holds a row for each of the ``size`` examples of the training split (``MethodContext.examples``),
    made at its first use as ``fill(rows_like)``: reading and writing rows then needs no host synchronisation.
    With ``size`` 0 (not known: a method built by hand) a table grows on demand to the largest row asked for.

    Under torchrun each process trains its shard of every minibatch, so it writes the rows of its own
    examples only; :meth:`gather` (at the end of each epoch) gives every process every row as written by the
    process that trained it (a row trained by no process that epoch: the processes' mean), so all processes
    hold the same tables and a checkpoint's (rank 0's) resumes them all exactly."""

    def __init__(self, size: int = 0) -> None:
        self.size = size
        self.tables: dict[str, torch.Tensor] = {}
        self.written: dict[str, torch.Tensor] = {}   # per table: 1 for the rows this process wrote since gather

    def get(self, name: str, index: torch.Tensor, like: torch.Tensor, fill) -> torch.Tensor:
        table = self.tables.get(name)
        if self.size:
            need = self.size
        else:   # size not known: the largest row asked for (a host read; the engine always gives the size)
            need = int(index.max()) + 1 if len(index) else 0
        if table is None or table.shape[1:] != like.shape[1:]:
            table = self.tables[name] = fill(like.new_empty((need, *like.shape[1:])))
            self.written[name] = torch.zeros(need, device=table.device)
        elif len(table) < need:
            more = need - len(table)
            table = self.tables[name] = torch.cat([table, fill(like.new_empty((more, *like.shape[1:])))])
            self.written[name] = torch.cat([self.written[name], torch.zeros(more, device=table.device)])
        return table[index].clone()

    def put(self, name: str, index: torch.Tensor, value: torch.Tensor) -> None:
        self.tables[name][index] = value.detach()
        self.written[name][index] = 1.0

    def clear(self) -> None:
        self.tables.clear()
        self.written.clear()

    def gather(self, all_reduce_sum) -> None:
        """Every process's written rows to every process (the identity on one process; a collective, which every
        process calls at the same point, once per epoch: a sum over the processes of two tensors per table)."""
        for name, table in self.tables.items():
            written = self.written[name]
            counts = all_reduce_sum(torch.cat([written, torch.ones(1, device=written.device)]))
            processes = counts[-1]
            share = torch.where(counts[:-1] > 0, written, 1.0 / processes).to(table.dtype)
            self.tables[name] = all_reduce_sum(table * share.view(-1, *[1] * (table.dim() - 1)))
            self.written[name] = torch.zeros_like(written)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.tables.items()}

    def load_state_dict(self, state: dict, device) -> None:
        self.tables = {k: v.to(device) for k, v in state.items()}
        self.written = {k: torch.zeros(len(v), device=device) for k, v in self.tables.items()}


def _index(batch: Batch, method: str) -> torch.Tensor:
    index = getattr(batch, "index", None)
    if index is None:
        raise ConfigError(f"method {method} keeps a perturbation per training example across epochs and needs the "
                          "examples' indices (their training-split rows, Batch.index): the engine's training loop "
                          "gives them; a Batch built by hand must set index")
    return index


class PriorGuided(SingleStep):
    """Shared by FGSM-PGI and FGSM-PCO: a per-example perturbation memory (random +-eps at first)."""

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.memory = ExampleMemory(ctx.examples)

    def random_sign(self, eps):
        """The first prior of each example: a random direction of length the run's full eps (the table is made
        whole at its first use, possibly during the eps warm-up; each minibatch projects it onto its own eps, so
        that an example starts from a random direction of length the eps of the minibatch that first holds it)."""
        eps = max(eps, self.ctx.eps)
        return lambda t: eps * self.ctx.threat.direction(2 * torch.rand_like(t) - 1)

    def on_epoch_end(self, epoch: int) -> None:
        super().on_epoch_end(epoch)
        self.memory.gather(self.ctx.all_reduce_sum)   # under torchrun: every process's rows to every process

    def state_dict(self):
        return {**super().state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"], self.ctx.input_std.device)


class MomentumPriors(PriorGuided):
    """FGSM-MEP's priors (FGSM-PGI and FGSM-MEP-CS): each example's stored perturbation and momentum, both reset
    every ``reset`` epochs; after the step, the momentum becomes g / |g|_1 + decay m and the stored perturbation
    moves by eps along its direction."""

    def priors(self, x, index, eps):
        """(start, momentum) of the minibatch's examples."""
        if self.epoch % self.reset == 0 and getattr(self, "_reset_at", None) != self.epoch:
            self.memory.clear()                 # the epoch's first minibatch: fresh priors
            self._reset_at = self.epoch
        delta = self.memory.get("delta", index, x, self.random_sign(eps))
        return self.ctx.threat.project(delta, x, eps), self.memory.get("momentum", index, x, torch.zeros_like)

    def remember(self, index, x, eps, start, grad, momentum) -> None:
        tm = self.ctx.threat
        momentum = grad / grad.abs().sum().clamp_min(1e-30) + self.decay * momentum
        self.memory.put("momentum", index, momentum)
        self.memory.put("delta", index, tm.project(start + eps * tm.direction(momentum), x, eps))

    def state_dict(self):
        return {**super().state_dict(), "reset_at": getattr(self, "_reset_at", None)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._reset_at = state["reset_at"]


MEP_PARAMS = (Param("decay", float, 0.3, "the momentum's decay", minimum=0.0),
              Param("reset", int, 40, "epochs between resets of the stored perturbations and momenta", minimum=1))


class FGSMPGI(MomentumPriors):
    """The start is the example's own perturbation from the last epoch (moved along a momentum of its input
    gradients), and the loss needs the start's forward: a start with per-example state and a loss of two
    forwards, which the composition has not."""

    name = "fgsm-pgi"
    description = ("FGSM-PGI, prior-guided initialisation (Jia et al., ECCV 2022; its FGSM-MEP, the momentum of "
                   "epoch priors, as the FastAT Benchmark runs it): each example starts from its stored "
                   "perturbation delta (random +-eps at first, and again every `reset` epochs); one step of alpha "
                   "(default eps) from it, projected; loss CE(f(x_adv)) + lambda MSE(f(x_adv), f(x + delta)); the "
                   "stored delta becomes clip(delta + eps sign(m)), m = grad / |grad|_1 (the minibatch's) + decay "
                   "m, m also stored per example. Cost 8/3. Needs the examples' indices.")
    params = (Param("lam", float, 10.0, "lambda, the weight of the MSE between x_adv's and the start's logits",
                    minimum=0.0), *MEP_PARAMS)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps = batch.x.detach(), batch.y, batch.eps
        index, n = _index(batch, self.name), len(x)
        start, momentum = self.priors(x, index, eps)
        adv, passes, kept = _step_keeping_start(model, x, start, batch, self.ctx.threat, y)
        logits = model(x + adv)
        loss = _ce_and_mse_to_start(logits, y, kept, self.lam, self.ctx.label_smoothing)
        step(loss)
        self.remember(index, x, eps, start, kept["grad"], momentum)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * (FORWARD + 2 * BACKWARD))


class FGSMMEPCS(Smoothed, MomentumPriors):
    """FGSM-MEP's priors with ConvergeSmooth's constraint on the clean loss: per-example state and a loss term
    on a forward of its own, outside the composition."""

    name = "fgsm-mep-cs"
    description = ("FGSM-MEP-CS, ConvergeSmooth (Zhao et al., ICCV 2023) on FGSM-MEP (Jia et al., ECCV 2022), as "
                   "the FastAT Benchmark runs it: each example starts from its stored perturbation delta, as "
                   "fgsm-pgi; one step of alpha (default eps) on CE against targets smoothed to p_y = smooth, "
                   "projected; loss CE(f(x_adv)) on the same targets (no MSE term) + the oscillatory constraint on "
                   "the clean loss l = CE(f(x)): +w l or -w l where l moved from the last epoch's mean by more than "
                   "gamma; the stored delta and momentum as fgsm-pgi's. Cost 7/3, 3 in the epochs where the "
                   "constraint applies. Needs the examples' indices.")
    params = (*CS_PARAMS, *MEP_PARAMS)
    state_name = "clean_loss"

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps = batch.x.detach(), batch.y, batch.eps
        index, n = _index(batch, self.name), len(x)
        targets = _smoothed_targets(y, self.ctx.num_classes, self.smooth, self.ctx.label_smoothing)
        start, momentum = self.priors(x, index, eps)
        with torch.enable_grad():
            adv, grad, passes = ascend(model, x, start, 1, batch.alpha, eps, self.ctx.threat, y, keep_grad=True,
                                       objective=lambda logits, _: _soft_ce(logits, targets) * len(logits))
        logits = model(x + adv)
        loss = _soft_ce(logits, targets)
        passes += n * (2 * FORWARD + BACKWARD)          # x_adv's forward and backward, the clean forward
        with torch.set_grad_enabled(self.cs.active(self.epoch)):   # its graph only where the constraint uses it
            clean = _soft_ce(model(x), targets)
        term = self.cs.term(clean, n, self.epoch)
        if term is not None:
            loss = loss + term
            passes += n * BACKWARD                      # the backward through the clean forward
        step(loss)
        self.remember(index, x, eps, start, grad, momentum)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes)

    def state_dict(self):
        return {**super().state_dict(), "cs": self.cs.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.cs.load_state_dict(state["cs"])


class FGSMPCO(PriorGuided):
    """The training input is a confidence-weighted mix of the example's stored perturbation and a lengthened FGSM
    step from it, with a loss over three forwards: nothing of the composition's attack -> loss."""

    name = "fgsm-pco"
    description = ("FGSM-PCO (Wang, Wang, Tian & Jin, ECCV 2024): from the example's stored perturbation delta, "
                   "delta' = clip(delta + alpha sign(grad)) (CE on targets smoothed to p_y = smooth); the "
                   "training input is c (x + delta) + (1 - c)(x + beta delta'), c = 1 - p_y(x + delta) (kept in "
                   "the graph); loss CE(f(x_new), smoothed) + lambda |MSE(f(x + delta'), f(x + delta)) - "
                   "MSE(f(x + delta'), f(x_new))|; delta' is stored. Cost 11/3. Needs the examples' indices.")
    params = (Param("lam", float, 10.0, "lambda, the weight of the difference of the two MSEs", minimum=0.0),
              Param("beta", float, 1.5, "how far the FGSM perturbation is lengthened in the mix", minimum=0.0),
              Param("smooth", float, 0.6, "the target probability of the true class", minimum=0.0))

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        index, n, classes = _index(batch, self.name), len(x), self.ctx.num_classes
        delta = tm.project(self.memory.get("delta", index, x, self.random_sign(eps)), x, eps)
        targets = _smoothed_targets(y, classes, self.smooth, self.ctx.label_smoothing)   # its attack's too
        kept = {}

        def gradient(k, x0, d, against):
            point = (x0 + d).requires_grad_(True)
            kept["logits"] = logits = model(point)
            (g,) = torch.autograd.grad(_soft_ce(logits, targets) * n, point, retain_graph=True)
            return g, logits

        with torch.enable_grad():
            fgsm, _, passes = ascend(model, x, delta, 1, batch.alpha, eps, tm, y, gradient=gradient)
        start_logits = kept["logits"]
        c = (1 - F.softmax(start_logits.float(), 1).gather(1, y[:, None])).clamp(0, 1).view(-1, *[1] * (x.dim() - 1))
        x_new = c * (x + delta) + (1 - c) * (x + self.beta * fgsm)
        logits = model(x_new.to(x.dtype))
        fgsm_logits = model(x + fgsm)
        mse = lambda a, b: (a.float() - b.float()).pow(2).mean()   # noqa: E731
        loss = _soft_ce(logits, targets) + self.lam * (mse(fgsm_logits, start_logits) - mse(fgsm_logits, logits)).abs()
        step(loss)
        self.memory.put("delta", index, fgsm)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * (2 * FORWARD + 3 * BACKWARD))


# ---- SSAT ----------------------------------------------------------------------------------------------

class SSAT(SingleStep):
    """Its training input is chosen among points along the FGSM perturbation by forwards in eval mode (the first
    misclassified one): a selection after the attack that the composition's attack -> loss has not."""

    name = "ssat"
    alpha_factor = 1.25
    description = ("SSAT (Kim, Lee & Lee, AAAI 2021, as the FastAT Benchmark runs it): FGSM-RS (step alpha, "
                   "default 1.25 eps, from uniform noise in the eps-ball, projected) gives delta; an example the "
                   "model misclassifies at the random start trains on x itself; for the others, the checkpoints "
                   "x + (k / c) delta, k = 1 .. c - 1, are classified in eval mode and the example trains on the "
                   "first misclassified one (x + delta if none); loss CE. Cost 2 + (c - 1)/3.")
    params = (Param("c", int, 3, "the number of parts the perturbation is split into (c - 1 checkpoints)",
                    minimum=1),)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        n, kept = len(x), {}

        def gradient(k, x0, d, against):
            grad, kept["logits"] = input_grad(model, x0 + d, against)
            return grad, kept["logits"]

        with torch.enable_grad():
            delta, _, passes = ascend(model, x, tm.random_delta(x, eps), 1, batch.alpha, eps, tm, y,
                                      gradient=gradient)
        # as the reference: "correct" is judged at the random start, the attack's own forward
        adv = torch.where(per_example(kept["logits"].argmax(1) == y, x), x + delta, x)
        with torch.no_grad(), preserved_mode(model, True):
            for k in range(self.c - 1, 0, -1):      # from the last checkpoint down: the first misclassified wins
                point = x + (k / self.c) * delta
                wrong = (model(point).argmax(1) != y) & (kept["logits"].argmax(1) == y)
                adv = torch.where(per_example(wrong, x), point, adv)
        logits = model(adv)
        loss = cross_entropy(logits, y, self.ctx.label_smoothing)
        step(loss)
        self.counter += 1
        return StepOutput(loss.detach(), logits.detach(), passes + n * ((self.c - 1) * FORWARD + FORWARD + BACKWARD))
