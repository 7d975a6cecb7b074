"""fastrobust.evaluation on small synthetic models: attack names, exact answers on linear models,
the threat-model constraints, side effects, the per-example worst case and the masking checks."""

import json
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import TinyNet, synthetic
from fastrobust.errors import ConfigError
from fastrobust.evaluation import (
    GradientMaskingWarning, adversarial_examples, evaluate, parse_attacks, run_order, spec_of,
)
from fastrobust.evaluation import checks
from fastrobust.evaluation.checks import Record

TOL = 1e-6


def quiet_evaluate(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)
        return evaluate(*args, progress=False, **kwargs)


# -- attack names ------------------------------------------------------------------------------

def test_parse_attacks_normalises_and_keeps_order():
    assert parse_attacks("clean, PGD20,cw20x1,pgd50x10,aa,Square,square1000,pgd20") == [
        "clean", "pgd20", "cw20", "pgd50x10", "aa", "square", "square1000"]
    assert parse_attacks(["fgsm", "apgd-ce", "pgd100"]) == ["fgsm", "apgd-ce", "pgd100"]
    spec = spec_of("cw20x3")
    assert (spec.kind, spec.loss, spec.steps, spec.restarts) == ("pgd", "cw", 20, 3)
    assert spec_of("aa").components == ("apgd-ce", "apgd-t", "fab-t", "square")


@pytest.mark.parametrize("bad", ["pgd", "pgd0", "pgdx3", "autoattack", "pgd20x0", "", "clean,,pgd20", "square0"])
def test_unknown_attack_names_are_refused_with_the_valid_ones(bad):
    with pytest.raises(ConfigError) as err:
        parse_attacks(bad)
    assert "pgd{K}" in str(err.value) or "steps must be" in str(err.value) or "queries" in str(err.value)


def test_run_order_is_cheapest_first_and_square_last():
    order = [s.name for s in run_order(parse_attacks("square,aa,pgd100,clean,apgd-t,pgd50x10,fgsm,cw20,pgd20"))]
    assert order == ["clean", "fgsm", "pgd20", "cw20", "pgd100", "pgd50x10", "apgd-t", "aa", "square"]


# -- exact answers on linear models -------------------------------------------------------------

class Linear2(nn.Module):
    """Two classes, logits ``(-z/2, z/2)`` with ``z = w.x + b``: class 1 iff z > 0."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(torch.tensor(float(b)))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z / 2, z / 2], 1)


def linear_problem(n=300, d=30, seed=0):
    """Inputs in [0.3, 0.7] (an eps <= 0.3 ball never meets the [0,1] box) with noisy labels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = 0.3 + 0.4 * torch.rand(n, 1, 5, d // 5, generator=g)
    z = x.flatten(1) @ w - 0.5 * w.sum()
    y = ((z + 0.3 * torch.randn(n, generator=g)) > 0).long()
    return Linear2(w, -0.5 * w.sum()), x, y


@pytest.mark.parametrize("norm,eps,dual,alpha", [
    ("linf", 0.01, 1, None), ("linf", 0.02, 1, None),
    # L2 PGD turns towards w only gradually; steps of eps/2 get there within 20 steps
    ("l2", 0.05, 2, 0.025), ("l2", 0.1, 2, 0.05),
])
def test_pgd_matches_the_analytic_robust_accuracy_of_a_linear_model(norm, eps, dual, alpha):
    model, x, y = linear_problem()
    z = x.flatten(1) @ model.w.detach() + model.b.detach()
    radius = eps * (model.w.detach().abs().sum() if dual == 1 else model.w.detach().norm())
    keep = (z.abs() - radius).abs() > 1e-3            # no example within rounding of the boundary
    x, y, z = x[keep], y[keep], z[keep]
    correct = (z > 0).long() == y
    analytic = (correct & (z.abs() > radius)).float().mean().item()
    result = quiet_evaluate(model, x, y, attacks="clean,pgd20,cw20", eps=eps, norm=norm, alpha=alpha,
                            cascade=False)
    assert result["clean_accuracy"] == pytest.approx(correct.float().mean().item())
    assert 0 < analytic < result["clean_accuracy"]
    for name in ("pgd20", "cw20"):
        assert result["attacks"][name]["accuracy"] == pytest.approx(analytic)
    assert result["robust_accuracy"] == pytest.approx(analytic)
    if norm == "linf":   # one full signed step is optimal for a linear model
        assert quiet_evaluate(model, x, y, attacks="fgsm", eps=eps)["robust_accuracy"] == pytest.approx(analytic)


# -- constraints and side effects ----------------------------------------------------------------

def trained_tinynet(classes=10, shape=(1, 8, 8), n=200):
    x, y = synthetic(n, classes=classes, shape=shape)
    torch.manual_seed(0)
    model = TinyNet(x[0].numel(), classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def tiny():
    return trained_tinynet()


def box_images(x):
    """Some pixels exactly at 0 and 1, so the [0,1] box binds."""
    return torch.where(x < 0.15, 0.0, torch.where(x > 0.6, 1.0, x))


@pytest.mark.parametrize("attack,norm,eps", [
    ("fgsm", "linf", 0.3), ("pgd20", "linf", 0.3), ("cw10x2", "linf", 0.3), ("pgd20", "l2", 2.0),
    ("apgd-ce", "linf", 0.3), ("apgd-ce", "l2", 2.0), ("square1000", "linf", 0.4), ("square1000", "l2", 3.0),
])
def test_perturbations_stay_in_the_ball_and_the_pixel_box(tiny, attack, norm, eps):
    model, x, y = tiny
    x = box_images(x[:24])
    x_adv = adversarial_examples(model, x, y[:24], attack, eps=eps, norm=norm)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (model(x_adv).argmax(1) != y[:24]).any()       # the attack did something


class ModeNet(nn.Module):
    """Batch norm and dropout (mode-dependent), one frozen parameter."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Flatten(), nn.Linear(4 * 64, 10))
        self.body[0].bias.requires_grad_(False)

    def forward(self, x):
        return self.body(x)


@pytest.mark.slow
def test_model_mode_parameters_gradients_and_global_rng_are_unchanged(tiny):
    _, x, y = tiny
    model = ModeNet()
    model.train()
    model.body[1].eval()                                  # a mixed mode must come back as it was
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    with torch.no_grad():
        y = model.eval()(x[:12]).argmax(1)                # labels it gets right, so every attack runs
    for m, mode in zip(model.modules(), modes):
        m.training = mode
    result = quiet_evaluate(model, x[:12], y, attacks="clean,fgsm,pgd5x2,cw5,apgd-ce,fab-t,square50", eps=0.002)
    assert result["attacks"]["square50"]["n_attacked"] > 0
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_uint8_and_float_inputs_give_the_same_result(tiny):
    model, x, y = tiny
    x8 = (x[:40] * 255).round().to(torch.uint8)
    a = quiet_evaluate(model, x8, y[:40], attacks="clean,pgd10", eps=0.2)
    b = quiet_evaluate(model, x8.float() / 255, y[:40], attacks="clean,pgd10", eps=0.2)
    assert [a["attacks"][k]["accuracy"] for k in a["attacks"]] == [b["attacks"][k]["accuracy"] for k in b["attacks"]]


# -- the worst case and the result ------------------------------------------------------------------

def test_worst_case_is_per_example_and_the_result_is_json(tiny):
    model, x, y = tiny
    result = quiet_evaluate(model, x[:60], y[:60], attacks="pgd20,clean,fgsm,cw20,pgd10x2", eps=0.2, batch_size=16)
    json.dumps(result)
    assert result["order"] == ["clean", "fgsm", "pgd20", "pgd10x2", "cw20"]     # by steps x restarts, CE first
    assert list(result["attacks"]) == result["order"]
    attacks, n = result["attacks"], result["n"]
    assert n == 60 and result["eps"] == 0.2 and result["norm"] == "linf"
    assert set(result["versions"]) == {"torch", "fastrobust", "pyautoattack"}
    # each attack's newly fooled examples add up to clean minus worst case
    fooled = sum(a["n_fooled"] for a in attacks.values())
    assert round((result["clean_accuracy"] - result["robust_accuracy"]) * n) == fooled
    worst = [a["worst_case_accuracy"] for a in attacks.values()]
    assert worst == sorted(worst, reverse=True) and worst[-1] == result["robust_accuracy"]
    assert attacks["fgsm"]["n_measured"] == n                       # the first attack sees every example
    assert attacks["pgd20"]["n_measured"] == n - attacks["fgsm"]["n_fooled"]
    assert attacks["pgd20"]["settings"]["alpha"] == pytest.approx(2.5 * 0.2 / 20)
    assert attacks["fgsm"]["settings"]["alpha"] == 0.2
    assert result["robust_accuracy"] < result["clean_accuracy"]
    # without the cascade every attack sees every example; the worst case differs only by random starts
    full = quiet_evaluate(model, x[:60], y[:60], attacks="clean,fgsm,pgd20,cw20,pgd10x2", eps=0.2, batch_size=16,
                          cascade=False)
    assert all(a["n_measured"] == n for a in full["attacks"].values())
    assert full["attacks"]["fgsm"]["n_fooled"] == attacks["fgsm"]["n_fooled"]   # deterministic, first in both
    assert abs(full["robust_accuracy"] - result["robust_accuracy"]) <= 2 / n


def test_eps_zero_gives_clean_accuracy(tiny):
    model, x, y = tiny
    result = quiet_evaluate(model, x[:30], y[:30], attacks="clean,pgd10,apgd-ce", eps=0)
    assert result["robust_accuracy"] == result["clean_accuracy"]
    assert "skipped" in result["attacks"]["apgd-ce"]["settings"]


@pytest.mark.parametrize("kwargs,words", [
    (dict(eps=8), "did you mean 8/255"),
    (dict(eps=-0.1), "eps must be"),
    (dict(eps=100.0, norm="l2"), "largest L2 distance"),
    (dict(eps=0.1, norm="l3"), "unknown norm"),
    (dict(eps=0.1, attacks="pgd20,bim"), "unknown attack 'bim'"),
    (dict(eps=0.1, batch_size=0), "batch_size"),
    (dict(eps=0.1, alpha=-1), "alpha"),
])
def test_bad_arguments_are_refused(tiny, kwargs, words):
    model, x, y = tiny
    with pytest.raises(ConfigError, match=words):
        evaluate(model, x[:4], y[:4], **kwargs)


def test_bad_inputs_are_refused(tiny):
    model, x, y = tiny
    with pytest.raises(ConfigError, match=r"\[0,1\]"):
        evaluate(model, x[:4] * 255, y[:4], eps=0.1)
    with pytest.raises(ConfigError, match="labels must be class indices"):
        evaluate(model, x[:4], y[:4] + 10, eps=0.1)
    with pytest.raises(ConfigError, match="labels"):
        evaluate(model, x[:4], y[:3], eps=0.1)
    with pytest.raises(ConfigError, match="needs at least 4 classes"):
        m3, x3, y3 = trained_tinynet(classes=3, n=30)
        evaluate(m3, x3, y3, attacks="apgd-t", eps=0.1)


# -- AutoAttack end to end ------------------------------------------------------------------------

@pytest.mark.slow
def test_autoattack_standard_runs_end_to_end_on_a_handful_of_examples(tiny):
    model, x, y = tiny
    result = quiet_evaluate(model, x[:6], y[:6], attacks="clean,pgd20,aa", eps=0.15)
    aa = result["attacks"]["aa"]
    assert list(aa["settings"]["components"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["settings"]["target_classes"] == 9 and aa["settings"]["square_queries"] == 5000
    assert result["robust_accuracy"] <= result["attacks"]["pgd20"]["accuracy"]
    assert aa["n_attacked"] == round(result["attacks"]["pgd20"]["accuracy"] * 6) > 0   # only the survivors
    assert all(c["n_attacked"] > 0 for c in aa["settings"]["components"].values())
    assert aa["seconds"] > 0 and result["versions"]["pyautoattack"]


# -- gradient-masking checks ----------------------------------------------------------------------

class Quantised(nn.Module):
    """Rounds its input to a few grey levels: zero input gradient everywhere (masked)."""

    def __init__(self, inner, levels=4):
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


def test_a_gradient_masked_model_raises_the_masking_flags(tiny):
    model, x, y = tiny
    with pytest.warns(GradientMaskingWarning):
        result = evaluate(Quantised(model), x[:40], y[:40], attacks="clean,fgsm,pgd20,square1000", eps=0.2,
                          progress=False)
    found = {f["check"] for f in result["flags"]}
    assert {"zero_gradients", "square_beats_whitebox"} <= found
    assert result["attacks"]["square1000"]["n_fooled"] > 0
    assert result["attacks"]["pgd20"]["accuracy"] > result["robust_accuracy"]


def test_a_healthy_model_raises_no_flag(tiny):
    model, x, y = tiny
    result = quiet_evaluate(model, x[:40], y[:40], attacks="clean,fgsm,pgd20,pgd100,square1000", eps=0.1)
    assert result["flags"] == []


class Noisy(nn.Module):
    """Dropout that stays on in eval mode: a randomised model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(F.dropout(x, 0.5, training=True))


def test_a_randomised_model_is_flagged_as_nondeterministic(tiny):
    model, x, y = tiny
    result = quiet_evaluate(Noisy(model), x[:40], y[:40], attacks="clean,pgd5", eps=0.05)
    assert "nondeterministic" in {f["check"] for f in result["flags"]}


class GridDetector(nn.Module):
    """Predicts class 1 for off-grid inputs (not multiples of 1/255), class 0 for clean images."""

    def forward(self, x):
        off = (x * 255 - torch.round(x * 255)).abs().flatten(1).sum(1)
        return torch.stack([1 - 100 * off, 100 * off - 1], 1)


def test_robust_above_clean_is_flagged():
    x = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    y = torch.ones(20, dtype=torch.long)                  # every clean image is misclassified
    result = quiet_evaluate(GridDetector(), x, y, attacks="clean,pgd10", eps=0.1)
    assert result["clean_accuracy"] == 0 and result["attacks"]["pgd10"]["accuracy"] > 0
    assert result["robust_accuracy"] == 0                 # worst case never above clean
    assert "robust_above_clean" in {f["check"] for f in result["flags"]}


def _record(name, ran, correct):
    ran, correct = torch.tensor(ran), torch.tensor(correct)
    return Record(spec_of(name), ran, correct & ran, ran & ~correct)


def test_more_steps_check_reruns_the_stronger_attack_on_what_the_weaker_fooled():
    clean = torch.ones(8, dtype=torch.bool)
    weak = _record("pgd10", [True] * 8, [False] * 6 + [True] * 2)     # pgd10 fooled 6
    strong = _record("pgd50", [False] * 6 + [True] * 2, [False] * 6 + [True] * 2)   # spared those 6
    asked = []

    def rerun(spec, idx):
        asked.append((spec.name, idx.tolist()))
        return torch.tensor([True, True, True, True, False, False])   # pgd50 cannot fool 4 of them

    found = checks.check_more_steps([weak, strong], clean, rerun)
    assert asked == [("pgd50", [0, 1, 2, 3, 4, 5])]
    assert [f["check"] for f in found] == ["more_steps_or_restarts"] and "4 of 6" in found[0]["message"]
    assert checks.check_more_steps([weak, strong], clean, lambda spec, idx: torch.zeros(len(idx), dtype=torch.bool)) == []
    assert checks.weaker(spec_of("pgd20"), spec_of("pgd20x5")) and checks.weaker(spec_of("fgsm"), spec_of("pgd20"))
    assert not checks.weaker(spec_of("pgd20"), spec_of("cw50")) and not checks.weaker(spec_of("pgd50"), spec_of("pgd20x5"))


def test_square_check_counts_only_examples_every_white_box_attack_missed():
    white = _record("pgd20", [True] * 1000, [True] * 990 + [False] * 10)
    square = _record("square", [True] * 990 + [False] * 10, [True] * 988 + [False] * 2 + [False] * 10)
    assert checks.check_square([white, square], 1000) == []           # 2 of 1000 <= 0.2%
    square = _record("square", [True] * 990 + [False] * 10, [True] * 980 + [False] * 10 + [False] * 10)
    assert [f["check"] for f in checks.check_square([white, square], 1000)] == ["square_beats_whitebox"]
