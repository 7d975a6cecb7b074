"""Robust accuracy of any model under a list of attacks, worst case per example.

Attacks run cheapest first (clean, our FGSM/PGD/CW by steps x restarts, AutoAttack
components, AutoAttack, Square last), whatever order they are given in. With
``cascade=True`` (the default) an attack only runs on the examples that are still
robust, i.e. classified correctly and not fooled by an attack before it; the first
attack after the clean pass runs on every example. The robust accuracy is the
fraction of examples that every attack left correctly classified.

Each attack's ``accuracy`` is measured on the examples that no earlier attack had
fooled (``n_measured``; clean errors count as errors): for the first attack that is
every example, so its accuracy is its own accuracy on the whole set. Later attacks
were spared the examples already fooled, so their accuracy is on fewer examples;
``worst_case_accuracy`` is the accuracy after this attack and all before it. With
``cascade=False`` every attack runs on every example and ``accuracy`` is its own
accuracy on all n (slower).
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..attacks import pgd, preserved_mode
from ..attacks.pgd import check_count   # one check of counts for attacks and evaluation
from ..config import parse_number, recipe_step
from ..errors import ConfigError
from ..timing import sync
from . import checks
from .autoattack import MIN_CLASSES, AutoAttackRunner, pyautoattack_version
from .specs import AttackSpec, parse_attacks, run_order, spec_of

NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l-inf": "linf", "l2": "l2", "l_2": "l2"}

PROTOCOL = (
    "model.eval(), inputs in [0,1]. Attacks run cheapest first; with cascade, an attack runs only on examples no "
    "earlier attack fooled. accuracy: correct under this attack / n_measured, where n_measured = the examples no "
    "earlier attack fooled (clean errors count as errors; the first attack measures all n). worst_case_accuracy: "
    "correct under this attack and every earlier one, / n. robust_accuracy: correct under every attack, / n. "
    "PGD/CW: random start, an example counts as fooled if any step misclassifies it (early stop), per-example "
    "worst case over restarts."
)


class GradientMaskingWarning(UserWarning):
    """A sanity check of the evaluation failed: the robust accuracy may be overstated."""


class BrokenModelWarning(UserWarning):
    """The model's clean logits are NaN or infinite: no accuracy is reported."""


def check_norm(norm: str) -> str:
    key = str(norm).strip().lower()
    if key not in NORM_ALIASES:
        raise ConfigError(f"unknown norm {norm!r}; use linf or l2")
    return NORM_ALIASES[key]


def check_eps(eps, norm: str, dims: int | None = None) -> float:
    """eps as a float in its norm's range: [0, 1] for L-inf, [0, sqrt(dims)] for L2."""
    if eps is None:
        raise ConfigError("eps is required: the radius of the threat model in [0,1] pixel units, e.g. 8/255 or 0.3")
    value = parse_number(eps, "eps")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"eps must be a finite number >= 0 (a radius in [0,1] pixel units), got {eps!r}")
    if norm == "linf" and value > 1:
        raise ConfigError(f"eps must be at most 1 for L-inf (pixels are in [0,1]), got {value:g}; "
                          f"did you mean {value:g}/255?")
    if norm == "l2" and dims is not None and value > math.sqrt(dims):
        raise ConfigError(f"eps {value:g} exceeds the largest L2 distance between two images of {dims} pixel values "
                          f"in [0,1] ({math.sqrt(dims):.4g}); give eps in [0,1] pixel units")
    return value


def _check_inputs(model, x, y) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module mapping [0,1] images to logits, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError("x and y must be torch tensors (images N x C x H x W, labels N)")
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"need images (N, C, H, W) and labels (N,) with N >= 1; got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices, got dtype {y.dtype}")
    if x.dtype != torch.uint8:
        if not x.dtype.is_floating_point:
            raise ConfigError(f"images must be uint8 (0..255) or float in [0,1], got dtype {x.dtype}")
        lo, hi = x.min().item(), x.max().item()
        if not (0 <= lo and hi <= 1):
            raise ConfigError(f"float images must lie in [0,1] (normalisation belongs inside the model); got values "
                              f"from {lo:.4g} to {hi:.4g}. Pass uint8 images or divide by 255.")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the block, both restored after
    (attacks need only input gradients; no ``.grad`` of a parameter is written)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    with preserved_mode(model, eval_mode=True):
        try:
            for p in params:
                p.requires_grad_(False)
            yield model
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)


def _device_of(model: nn.Module, device) -> torch.device:
    own = next(model.parameters(), next(model.buffers(), None))
    own = own.device if own is not None else torch.device("cpu")
    if device is not None and torch.device(device) != own:
        wanted = torch.device(device)
        if not (wanted.type == own.type and wanted.index is None):
            raise ConfigError(f"the model is on {own} but device={device!r} was asked for: move the model with "
                              "model.to(device) first, or leave device unset")
    return own


class Evaluation:
    """One evaluation: the model, the data and the threat model, and how to attack batches of it."""

    def __init__(self, model, x, y, *, eps, norm, alpha, alpha_ratio, batch_size, device, seed, progress):
        self.model, self.x, self.y = model, x, y
        self.eps, self.norm, self.alpha, self.alpha_ratio = eps, norm, alpha, alpha_ratio
        self.batch_size, self.device, self.seed, self.progress = batch_size, device, seed, progress
        self.num_classes = None
        self.non_finite = 0          # clean examples whose logits hold a NaN or inf
        self.aa_messages: list[str] = []
        self._aa: dict[int, AutoAttackRunner] = {}

    # -- data ---------------------------------------------------------------------------------
    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = self.x[idx].to(self.device)
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
        return xb, self.y[idx].to(self.device).long()

    def batches(self, idx: torch.Tensor, desc: str) -> Iterator[torch.Tensor]:
        with tqdm(total=len(idx), desc=desc, unit="img", leave=False,
                  disable=None if self.progress is None else not self.progress) as bar:
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                yield chunk
                bar.update(len(chunk))

    @torch.no_grad()
    def predict(self, idx: torch.Tensor) -> torch.Tensor:
        """Predicted classes of the clean examples ``idx`` (on the CPU)."""
        out = []
        for chunk in self.batches(idx, "clean"):
            logits = self.model(self.batch(chunk)[0])
            self.num_classes = logits.shape[1]
            self.non_finite += int((~torch.isfinite(logits)).flatten(1).any(1).sum())
            out.append(logits.argmax(1).cpu())
        return torch.cat(out)

    # -- our attacks ---------------------------------------------------------------------------
    def pgd_settings(self, spec: AttackSpec) -> dict:
        if spec.name == "fgsm":
            alpha, rule = self.eps, "eps (one full step)"
        elif self.alpha is not None:
            alpha, rule = self.alpha, "given"
        elif self.alpha_ratio is not None and self.norm == "linf":
            alpha = recipe_step(self.eps, spec.steps, self.alpha_ratio)
            rule = (f"data set recipe step ({self.alpha_ratio:.4g} eps), or 2.5 eps / steps when {spec.steps} recipe "
                    "steps cannot cross the ball")
        else:
            alpha, rule = 2.5 * self.eps / spec.steps, "2.5 eps / steps"
        return {"implementation": "fastrobust.attacks.pgd", "loss": spec.loss, "norm": self.norm, "eps": self.eps,
                "steps": spec.steps, "restarts": spec.restarts, "alpha": alpha, "alpha_rule": rule,
                "random_start": spec.random_start, "early_stop": True, "seed": self.seed}

    def pgd_adversarial(self, spec: AttackSpec, xb: torch.Tensor, yb: torch.Tensor, alpha: float) -> torch.Tensor:
        gen = torch.Generator(device=xb.device).manual_seed(self.seed)
        return pgd(self.model, xb, yb, self.eps, steps=spec.steps, alpha=alpha, norm=self.norm, loss=spec.loss,
                   random_start=spec.random_start, restarts=spec.restarts, early_stop=True, generator=gen)

    def survivors(self, idx: torch.Tensor, desc: str, attack) -> torch.Tensor:
        """Which of the examples ``idx`` stay correctly classified under ``attack(xb, yb) -> x_adv`` (bool, CPU)."""
        out = []
        for chunk in self.batches(idx, desc):
            xb, yb = self.batch(chunk)
            x_adv = attack(xb, yb)
            with torch.no_grad():
                out.append((self.model(x_adv).argmax(1) == yb).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def run_pgd(self, spec: AttackSpec, idx: torch.Tensor, desc: str | None = None) -> torch.Tensor:
        alpha = self.pgd_settings(spec)["alpha"]
        return self.survivors(idx, desc or spec.name, lambda xb, yb: self.pgd_adversarial(spec, xb, yb, alpha))

    # -- AutoAttack ----------------------------------------------------------------------------
    def autoattack(self, queries: int) -> AutoAttackRunner:
        if queries not in self._aa:
            self._aa[queries] = AutoAttackRunner(self.model, eps=self.eps, norm=self.norm,
                                                 num_classes=self.num_classes, device=self.device, seed=self.seed,
                                                 queries=queries, messages=self.aa_messages)
        return self._aa[queries]


def _mask(n: int, idx: torch.Tensor, values: torch.Tensor | bool = True) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[idx] = values
    return m


def _run_attack(ev: Evaluation, spec: AttackSpec, target: torch.Tensor, robust: torch.Tensor,
                clean_correct: torch.Tensor) -> checks.Record:
    """Run ``spec`` on the examples of the mask ``target`` (AutoAttack: those of them classified
    correctly, as it attacks no others); ``robust`` is the mask of examples robust so far."""
    n = len(robust)
    sync(ev.device)
    start = time.perf_counter()
    if spec.kind == "pgd":
        idx = target.nonzero().squeeze(1)
        record = checks.Record(spec, target.clone(), _mask(n, idx, ev.run_pgd(spec, idx)),
                               torch.zeros(n, dtype=torch.bool), settings=ev.pgd_settings(spec))
    else:
        record = _run_autoattack(ev, spec, target & clean_correct)
    sync(ev.device)
    record.seconds = time.perf_counter() - start
    record.fooled = robust & record.ran & ~record.correct
    return record


def _autoattack_cascade(ev: Evaluation, spec: AttackSpec, correct: torch.Tensor, attack) -> dict:
    """AutoAttack's components one after the other, each on the examples none before it fooled: ``correct`` (a
    mask, updated in place); ``attack(component, idx)`` says which of the examples ``idx`` stay correct.
    Returns the components skipped, with why."""
    skipped = {}
    for component in spec.components:
        if ev.eps == 0:
            skipped[component] = "eps = 0: no perturbation is possible"
        elif ev.num_classes < MIN_CLASSES[component]:     # (a single component was refused up front)
            skipped[component] = f"needs at least {MIN_CLASSES[component]} classes, the model has {ev.num_classes}"
        else:
            idx = correct.nonzero().squeeze(1)
            correct[idx] = attack(component, idx)
    return skipped


def _run_autoattack(ev: Evaluation, spec: AttackSpec, target: torch.Tensor) -> checks.Record:
    """AutoAttack on the examples of the mask ``target``, with a record per component."""
    n = len(target)
    correct = target.clone()          # not fooled by any component so far
    parts, components = [], {}

    def attack(component: str, idx: torch.Tensor) -> torch.Tensor:
        runner = ev.autoattack(spec.queries)
        sync(ev.device)
        start = time.perf_counter()
        desc = component if spec.name == component else f"{spec.name} {component}"
        ok = ev.survivors(idx, desc, lambda xb, yb: runner.run(component, xb, yb))
        sync(ev.device)
        part_spec = spec if spec.components == (component,) else spec_of(component)
        parts.append(checks.Record(part_spec, _mask(n, idx), _mask(n, idx, ok), _mask(n, idx, ~ok),
                                   seconds=time.perf_counter() - start))
        components[component] = {"n_attacked": len(idx), "n_fooled": int((~ok).sum()),
                                 "seconds": round(parts[-1].seconds, 3)}
        return ok

    skipped = _autoattack_cascade(ev, spec, correct, attack)
    settings = dict(ev.autoattack(spec.queries).settings) if components else \
        {"implementation": "pyautoattack", "norm": ev.norm, "eps": ev.eps}
    settings["components"] = components
    if skipped:
        settings["skipped"] = skipped
    return checks.Record(spec, target.clone(), correct, torch.zeros(n, dtype=torch.bool), settings=settings, parts=parts)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks=("clean", "pgd20"),
    eps,
    norm: str = "linf",
    alpha: float | None = None,
    batch_size: int = 500,
    device=None,
    seed: int = 0,
    progress: bool | None = None,
    alpha_ratio: float | None = None,
    cascade: bool = True,
    masking_checks: bool = True,
) -> dict:
    """Clean accuracy, each attack's accuracy and the per-example worst case of ``model`` on ``(x, y)``.

    Args:
        model: any ``torch.nn.Module`` mapping [0,1] images to logits. It runs in eval
            mode; its mode, parameters and their ``requires_grad``/``.grad`` are unchanged after.
        x: images, uint8 (0..255) or float in [0,1], (N, C, H, W). They stay where they are
            and are moved to the model's device batch by batch (as ``y`` is).
        y: integer labels (N,).
        attacks: names or ``"clean,pgd20,aa"`` (see :func:`parse_attacks`).
        eps: radius, in [0,1] pixel units (``8/255`` strings are accepted).
        norm: ``"linf"`` or ``"l2"``.
        alpha: PGD step for every PGD/CW attack; default: ``alpha_ratio * eps`` when
            ``alpha_ratio`` (the data set recipe's alpha/eps) is given and K such steps can
            cross the ball, else ``2.5 * eps / K``. FGSM always steps eps.
        batch_size: examples per attacked batch.
        device: the model's device (default); the model is not moved.
        seed: seeds the random starts and AutoAttack; the global RNG is left as it was.
        progress: a progress bar per attack (None: only on a terminal).
        cascade: attack only examples still robust (default); False attacks every example
            with every attack, so each accuracy is the attack's own on all n.
        masking_checks: run the gradient-masking checks (each failed check is a ``flags``
            entry and a :class:`GradientMaskingWarning`).

    Returns:
        A JSON-serialisable dict: ``n``, ``eps``, ``norm``, ``clean_accuracy``,
        ``robust_accuracy`` (None if no attack ran), ``attacks`` (per attack: ``accuracy`` (None if
        earlier attacks fooled every example),
        ``seconds``, ``n_measured``, ``n_attacked``, ``n_fooled``, ``worst_case_accuracy``,
        ``settings``), ``flags``, ``versions``, ``order``, ``protocol`` and more.
    """
    _check_inputs(model, x, y)
    names = parse_attacks(attacks)
    norm = check_norm(norm)
    eps = check_eps(eps, norm, x[0].numel())
    if alpha is not None:
        alpha = parse_number(alpha, "alpha")
        if not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"alpha must be a number > 0, got {alpha!r}")
    batch_size = check_count("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    device = _device_of(model, device)
    specs = run_order(names)
    n = len(y)
    ev = Evaluation(model, x, y.cpu(), eps=eps, norm=norm, alpha=alpha, alpha_ratio=alpha_ratio,
                    batch_size=batch_size, device=device, seed=int(seed), progress=progress)
    started = time.perf_counter()
    with frozen(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        all_idx = torch.arange(n)
        sync(device)
        t0 = time.perf_counter()
        clean_correct = ev.predict(all_idx) == ev.y
        clean_seconds = time.perf_counter() - t0
        if ev.non_finite:   # a broken model (e.g. diverged training): no accuracy is reported
            result = _broken_result(ev, specs, n, cascade)
            result["seconds"] = round(time.perf_counter() - started, 3)
            warnings.warn(result["flags"][0]["message"], BrokenModelWarning, stacklevel=2)
            return result
        _check_after_clean_pass(ev, specs)
        t0 = time.perf_counter()
        flags = _probe_model(ev, clean_correct) if masking_checks else []
        check_seconds = time.perf_counter() - t0
        records: list[checks.Record] = []
        robust = clean_correct.clone()
        for spec in specs:
            if spec.kind == "clean":
                continue
            target = torch.ones(n, dtype=torch.bool) if (not cascade or not records) else robust.clone()
            record = _run_attack(ev, spec, target, robust, clean_correct)
            robust &= record.correct | ~record.ran
            records.append(record)
        if masking_checks:
            t0 = time.perf_counter()
            flags += checks.check_robust_above_clean(records, clean_correct)
            flags += checks.check_attack_gap(records, clean_correct)
            flags += checks.check_more_steps(records, clean_correct,
                                             lambda spec, idx: ev.run_pgd(spec, idx, f"check {spec.name}"))
            flags += checks.check_square(records, n)
            flags += [checks.flag("autoattack", f"AutoAttack: {m}") for m in ev.aa_messages]
            check_seconds += time.perf_counter() - t0
    result = _result(ev, specs, records, clean_correct, clean_seconds, flags, cascade)
    result["check_seconds"] = round(check_seconds, 3)
    result["seconds"] = round(time.perf_counter() - started, 3)
    for f in flags:
        warnings.warn(f"{f['check']}: {f['message']}", GradientMaskingWarning, stacklevel=2)
    return result


def _broken_result(ev: Evaluation, specs: list[AttackSpec], n: int, cascade: bool) -> dict:
    """The result for a model whose clean logits are not finite: a flag, and neither clean nor robust accuracy."""
    message = (f"the model's logits are NaN or infinite on {ev.non_finite} of {n} clean examples: the model is "
               "broken (e.g. its training diverged; retrain with a lower learning rate or --grad-clip). No clean "
               "or robust accuracy is reported and no attack was run.")
    return {
        "n": n, "eps": ev.eps, "norm": ev.norm, "clean_accuracy": None, "robust_accuracy": None, "broken": True,
        "attacks": {}, "flags": [checks.flag("non_finite_logits", message)],
        "versions": {"torch": torch.__version__, "fastrobust": __version__, "pyautoattack": pyautoattack_version()},
        "order": [s.name for s in specs], "cascade": cascade, "batch_size": ev.batch_size, "seed": ev.seed,
        "device": str(ev.device), "protocol": PROTOCOL, "check_seconds": 0.0,
    }


def _check_after_clean_pass(ev: Evaluation, specs: list[AttackSpec]) -> None:
    """What needs the number of classes, before any attack runs."""
    if int(ev.y.min()) < 0 or int(ev.y.max()) >= ev.num_classes:
        raise ConfigError(f"labels must be class indices 0..{ev.num_classes - 1} (the model has "
                          f"{ev.num_classes} outputs), got {int(ev.y.min())}..{int(ev.y.max())}")
    for spec in specs:
        if spec.kind != "autoattack":
            continue
        if ev.x.dim() != 4:
            raise ConfigError(f"attack {spec.name} needs images (N, C, H, W), got shape {tuple(ev.x.shape)}")
        if len(spec.components) == 1 and ev.num_classes < MIN_CLASSES[spec.components[0]]:
            raise ConfigError(f"attack {spec.name} needs at least {MIN_CLASSES[spec.components[0]]} classes, "
                              f"the model has {ev.num_classes}")


def _probe_model(ev: Evaluation, clean_correct: torch.Tensor) -> list[dict]:
    idx = torch.arange(min(len(clean_correct), checks.PROBE_SIZE))
    xb, yb = ev.batch(idx)
    found = [checks.check_determinism(ev.model, xb), checks.check_eps_zero(ev.model, xb, yb, ev.norm)]
    keep = clean_correct[idx].to(xb.device)
    found.append(checks.check_zero_gradients(ev.model, xb[keep], yb[keep]))
    return [f for f in found if f]


def _result(ev, specs, records, clean_correct, clean_seconds, flags, cascade) -> dict:
    n = len(clean_correct)
    clean_acc = int(clean_correct.sum()) / n
    attacks = {}
    if any(s.kind == "clean" for s in specs):
        attacks["clean"] = {"accuracy": clean_acc, "seconds": round(clean_seconds, 3), "n_measured": n,
                            "n_attacked": n, "n_fooled": 0, "worst_case_accuracy": clean_acc,
                            "settings": {"model_mode": "eval"}}
    robust = clean_correct.clone()
    for r in records:
        measured = r.ran | ~clean_correct
        robust &= r.correct | ~r.ran
        attacks[r.spec.name] = {
            # None when earlier attacks left no example to measure it on
            "accuracy": int(r.correct[measured].sum()) / int(measured.sum()) if measured.any() else None,
            "seconds": round(r.seconds, 3),
            "n_measured": int(measured.sum()), "n_attacked": int(r.ran.sum()), "n_fooled": int(r.fooled.sum()),
            "worst_case_accuracy": int(robust.sum()) / n,
            "settings": {"attack": r.spec.label, **r.settings,
                         "run_on": "all examples" if int(r.ran.sum()) == n or not cascade else
                         "the examples no earlier attack fooled"},
        }
    return {
        "n": n, "eps": ev.eps, "norm": ev.norm, "clean_accuracy": clean_acc,
        "robust_accuracy": int(robust.sum()) / n if records else None,
        "attacks": attacks, "flags": flags,
        "versions": {"torch": torch.__version__, "fastrobust": __version__, "pyautoattack": pyautoattack_version()},
        "order": [s.name for s in specs], "cascade": cascade, "batch_size": ev.batch_size, "seed": ev.seed,
        "device": str(ev.device), "protocol": PROTOCOL,
    }


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, *, eps, norm: str = "linf",
                         alpha: float | None = None, seed: int = 0, alpha_ratio: float | None = None) -> torch.Tensor:
    """The adversarial examples of one attack (``"pgd20"``, ``"cw20"``, ``"apgd-ce"``, ``"aa"``, ...)
    for ``x`` (uint8, or float in [0,1]) and ``y``, as one batch: float images on the model's device. For
    AutoAttack, an example's point is that of the first component that fooled it (else ``x``)."""
    _check_inputs(model, x, y)
    spec = spec_of(attack)
    norm = check_norm(norm)
    eps = check_eps(eps, norm, x[0].numel())
    device = _device_of(model, None)
    ev = Evaluation(model, x, y, eps=eps, norm=norm, alpha=alpha, alpha_ratio=alpha_ratio, batch_size=len(x),
                    device=device, seed=seed, progress=False)
    with frozen(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        xb, yb = ev.batch(torch.arange(len(x)))
        if spec.kind == "clean" or (spec.kind == "autoattack" and eps == 0):
            return xb
        if spec.kind == "pgd":
            return ev.pgd_adversarial(spec, xb, yb, ev.pgd_settings(spec)["alpha"])
        todo = ev.predict(torch.arange(len(x))).to(device) == yb     # AutoAttack attacks only these
        x_adv = xb.clone()

        def run_component(component: str, idx: torch.Tensor) -> torch.Tensor:
            if not len(idx):
                return torch.zeros(0, dtype=torch.bool, device=device)
            cand = ev.autoattack(spec.queries).run(component, xb[idx], yb[idx])
            with torch.no_grad():
                fooled = model(cand).argmax(1) != yb[idx]
            x_adv[idx[fooled]] = cand[fooled]
            return ~fooled

        _autoattack_cascade(ev, spec, todo, run_component)
        return x_adv
