"""TRADES, MART and their M+ versions: losses by hand, exact cost, feasibility, training."""

import math

import pytest
import torch

from fastrobust.methods import Batch
from fastrobust.methods.base import kl_per_example
from fastrobust.methods.mart import mart_loss
from fastrobust.methods.trades import trades_attack, trades_loss
from helpers import ForwardCounter, TinyNet, synthetic
from test_methods_mplus import EPS, assert_feasible, make, record_inputs, run_epochs

LOGITS_NAT = [[1.0, -0.5, 0.2], [0.3, 0.8, -1.0]]
LOGITS_ADV = [[0.2, 0.4, 0.1], [-0.3, 1.2, 0.0]]
Y = [0, 2]
BETA = 6.0


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))


def _tensors():
    return torch.tensor(LOGITS_NAT), torch.tensor(LOGITS_ADV), torch.tensor(Y)


def test_trades_loss_by_hand():
    total = 0.0
    for zn, za, y in zip(LOGITS_NAT, LOGITS_ADV, Y):
        pn, pa = softmax(zn), softmax(za)
        ce = -math.log(pn[y])                       # CE on the clean input
        total += ce + BETA * kl(pn, pa)             # + beta KL(p(x) || p(x_adv))
    assert trades_loss(*_tensors(), BETA).item() == pytest.approx(total / 2, rel=1e-5)


def test_mart_loss_by_hand():
    total = 0.0
    for zn, za, y in zip(LOGITS_NAT, LOGITS_ADV, Y):
        pn, pa = softmax(zn), softmax(za)
        runner_up = max(pa[j] for j in range(3) if j != y)
        bce = -math.log(pa[y]) - math.log(1 - runner_up)           # boosted CE on x_adv
        total += bce + BETA * kl(pn, pa) * (1 - pn[y])             # + beta KL weighted by 1 - p_y(x)
    assert mart_loss(*_tensors(), BETA).item() == pytest.approx(total / 2, rel=1e-5)


def test_trades_attack_is_feasible_raises_the_kl_and_keeps_the_mode():
    torch.manual_seed(0)
    model = TinyNet().train()
    x, _ = synthetic(32)
    x_adv = trades_attack(model, x, EPS, EPS / 4, 10)
    assert model.training
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    start = trades_attack(model, x, EPS, EPS / 4, 0)
    assert (start - x).abs().max() <= 0.01                             # 0.001 N(0,1), projected
    with torch.no_grad():
        target = model(x)
        assert kl_per_example(target, model(x_adv)).sum() > kl_per_example(target, model(start)).sum()


@pytest.mark.parametrize("name,params,passes,forwards", [
    ("trades", {"steps": 3}, 3 + 2 + 1 / 3, 3 + 3),   # clean target (forward only) + 3 steps + x and x_adv
    ("mart", {"steps": 3}, 3 + 2, 3 + 2),
    ("mtrades", {"k_start": 0}, 2, 2),                # K = 0: x and x + noise, no attack
    ("mmart", {"k_start": 0}, 1, 1),                  # K = 0: x alone, forwarded once
    ("mtrades", {"k_start": 2}, 2 + 2 + 1 / 3, 2 + 3),
])
def test_reported_passes_match_work_done(name, params, passes, forwards):
    model, method, step, calls = make(name, **params)
    counter, seen = ForwardCounter(model), record_inputs(model)
    x, y = synthetic(32)
    out = method.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    assert out.passes == pytest.approx(passes * 32) and counter.examples == forwards * 32
    assert len(calls) == 1 and out.logits.shape == (32, 3)
    assert_feasible(seen, x)


@pytest.mark.parametrize("name", ["trades", "mart", "mtrades", "mmart"])
def test_training_loss_decreases(name):
    model, method, step, _ = make(name, **({"k_start": 2} if name in ("mtrades", "mmart") else {"steps": 5}))
    x, y = synthetic(96)
    losses = [method.train_batch(model, Batch(x, y, 0.05, 0.0125), step).loss.item() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize("name", ["mtrades", "mmart"])
def test_m_plus_versions_grow_k_and_restore_it(name):
    model, method, step, _ = make(name, gamma=0.5)
    states, _ = run_epochs(model, method, step, 3)
    assert [s["K"] for s in states][:2] == [0, 1] and all(s["grad_magnitude"] > 0 for s in states)
    _, fresh, _, _ = make(name, gamma=0.5)
    fresh.load_state_dict(method.state_dict())
    assert fresh.level == method.level and fresh.rule.threshold == method.rule.threshold
