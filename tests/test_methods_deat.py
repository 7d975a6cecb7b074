"""DEAT-d, DEAT-p and M+DEAT: replay counts, cost, the perturbation's feasibility, carry mode, resume state."""

import pytest
import torch

from fastrobust.methods import Batch
from helpers import ForwardCounter, synthetic
from test_methods_mplus import EPS, assert_feasible, make, record_inputs, run_epochs


def test_deat_d_schedule():
    model, method, step, _ = make("deat-d", d=3, r_max=5)
    used = []
    for epoch in range(20):
        method.on_epoch_end(epoch)
        used.append(method.state()["r"])
    assert used == [min(t // 3 + 1, 5) for t in range(20)]


@pytest.mark.parametrize("p,expected", [(0.0, [1, 2, 3, 3, 3]), (1.0, [1, 1, 1, 1, 1])])
def test_deat_p_raises_r_on_last_replay_accuracy(p, expected):
    model, method, step, _ = make("deat-p", p=p, r_max=3)
    states, passes = run_epochs(model, method, step, 5)
    assert [s["r"] for s in states] == expected and passes == expected
    assert all(0.0 <= s["replay_acc"] <= 1.0 for s in states)


def test_deat_p_accuracy_is_summed_over_processes():
    local = {}
    a = make("deat-p", p=0.5, all_reduce_sum=lambda t: t + local["b"])
    b = make("deat-p", p=0.5, all_reduce_sum=lambda t: t + local["a"])
    a[1].counts, b[1].counts = torch.tensor([9.0, 10.0], dtype=torch.float64), torch.tensor([0.0, 10.0], dtype=torch.float64)
    local["a"], local["b"] = a[1].counts.clone(), b[1].counts.clone()
    a[1].on_epoch_end(0)
    b[1].on_epoch_end(0)
    assert a[1].state()["replay_acc"] == b[1].state()["replay_acc"] == 0.45 and a[1].level == b[1].level == 1


@pytest.mark.parametrize("name", ["deat-d", "deat-p", "mdeat"])
def test_replay_count_cost_and_feasibility(name):
    model, method, step, calls = make(name)
    method.level = 3
    counter, seen = ForwardCounter(model), record_inputs(model)
    x, y = synthetic(32)
    out = method.train_batch(model, Batch(x, y, EPS, EPS / 2), step)
    assert len(calls) == 3 and out.passes == 3 * 32 and counter.examples == 3 * 32
    assert out.logits.shape == (32, 3) and out.loss.ndim == 0
    assert_feasible(seen, x)                           # every replay's input: x + delta, delta feasible
    assert not torch.equal(seen[0], seen[1])           # delta moved between replays


def test_mdeat_step_size():
    _, method, _, _ = make("mdeat")
    x, y = synthetic(4)
    assert method.step_size(Batch(x, y, 0.1, 0.01), 4) == pytest.approx(0.025)   # eps / r
    assert method.step_size(Batch(x, y, 0.1, 0.05), 4) == pytest.approx(0.05)    # alpha
    assert method.step_size(Batch(x, y, 0.1, 0.05), 1) == pytest.approx(0.1)


def test_uniform_start_is_fresh_and_carry_start_is_carried():
    model, method, step, _ = make("deat-d", start="uniform")
    x, y = synthetic(16)
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert method.delta is None                        # nothing carried
    model, method, step, _ = make("deat-d", start="carry")
    seen = record_inputs(model)
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert torch.equal(seen[0], x)                     # zero start at first
    carried = method.delta.clone()
    assert 0 < carried.abs().max() <= EPS + 1e-6
    method.on_epoch_end(0)                             # carried across epochs too
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert torch.allclose(seen[1], x + carried)


@pytest.mark.parametrize("name", ["deat-d", "deat-p", "mdeat"])
def test_training_loss_decreases(name):
    model, method, step, _ = make(name)
    x, y = synthetic(96)
    losses = [method.train_batch(model, Batch(x, y, 0.05, 0.05), step).loss.item() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize("name,params", [("deat-d", {"d": 1}), ("deat-p", {"p": 0.0}), ("mdeat", {"gamma": 0.5})])
def test_state_dict_round_trip(name, params):
    model, method, step, _ = make(name, start="carry", **params)
    run_epochs(model, method, step, 3)
    assert method.level > 1
    _, fresh, _, _ = make(name, start="carry", **params)
    fresh.load_state_dict(method.state_dict())
    assert fresh.level == method.level and torch.equal(fresh.delta, method.delta)
    if name == "mdeat":
        assert fresh.rule.state_dict() == method.rule.state_dict()
