"""The M+ rule, the gradient magnitude MG, and the M+ methods' cost, process agreement and resume state.

``make``, ``run_epochs``, ``record_inputs`` and ``assert_feasible`` are shared with the other ``test_methods_*`` files.
"""

import io
import json

import pytest
import torch

from fastrobust.config import TrainConfig
from fastrobust.engine import train
from fastrobust.methods import Batch, MethodContext, get_method
from fastrobust.methods.mplus import MPlusRule, grad_magnitude
from helpers import ForwardCounter, TinyNet, synthetic

EPS = 0.1
# METHODS.md: M+DEAT's replay count in the reference run, epoch by epoch (r used DURING the epoch)
REFERENCE_R = [1] + [2] * 2 + [3] * 5 + [4] * 19 + [5] * 2 + [6] * 13 + [7] * 2 + [8] * 6


def make(name, epochs=3, input_std=None, all_reduce_sum=None, lr=0.1, **params):
    """(model, method, step, calls) for method ``name`` on TinyNet; ``calls`` gets each step's input gradient."""
    torch.manual_seed(0)
    model = TinyNet().train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    calls = []

    def step(loss, wrt=None):
        opt.zero_grad()
        if wrt is not None:
            wrt.grad = None
        loss.backward()
        opt.step()
        grad = None if wrt is None else wrt.grad.detach()
        calls.append(grad)
        return grad

    ctx = MethodContext(num_classes=3, input_std=torch.ones(1) if input_std is None else input_std,
                        epochs=epochs, batches_per_epoch=2)
    if all_reduce_sum is not None:
        ctx.all_reduce_sum = all_reduce_sum
    cls = get_method(name)
    return model, cls(ctx, **cls.resolve_params(params)), step, calls


def record_inputs(model):
    """A list that receives a copy of every input forwarded through ``model``."""
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    return seen


def assert_feasible(inputs, x, eps=EPS):
    """Every forwarded input is x + delta with |delta| <= eps and pixels in [0, 1]."""
    for inp in inputs:
        assert (inp - x).abs().max() <= eps + 1e-6 and inp.min() >= 0 and inp.max() <= 1


def run_epochs(model, method, step, epochs, n=24, batches=2, eps=EPS, alpha=EPS / 2):
    """Train ``epochs`` epochs of ``batches`` synthetic minibatches; returns (state() per epoch, passes per epoch / n)."""
    states, passes = [], []
    for epoch in range(epochs):
        total = 0.0
        for b in range(batches):
            x, y = synthetic(n, seed=b)
            total += method.train_batch(model, Batch(x, y, eps, alpha), step).passes
        method.on_epoch_end(epoch)
        states.append(method.state())
        passes.append(total / (n * batches))
    return states, passes


def reference_mgs(gamma=1.01):
    """MG values for 50 epochs that make the M+ rule follow REFERENCE_R: just above the threshold where r
    rises, else equal to it (odd epochs) or below it (even epochs)."""
    raises = {t for t in range(1, 49) if REFERENCE_R[t + 1] > REFERENCE_R[t]}
    mgs, threshold = [], None
    for t in range(50):
        if t <= 1:
            mg = 100.0
            threshold = gamma * mg if t == 1 else None
        elif t in raises:
            mg = threshold * 1.001
            threshold = gamma * mg
        else:
            mg = threshold if t % 2 else 0.9 * threshold
        mgs.append(mg)
    return mgs


def test_rule_reproduces_the_reference_trajectory():
    rule, used = MPlusRule(start=1, maximum=8, gamma=1.01), []
    for t, mg in enumerate(reference_mgs()):
        used.append(rule.level)
        rule.update(t, mg)
    assert used == REFERENCE_R and sum(used) == 246


def test_mdeat_follows_the_reference_trajectory_through_on_epoch_end():
    _, method, _, _ = make("mdeat")
    used = []
    for t, mg in enumerate(reference_mgs()):
        method.mg_sum = torch.tensor(mg, dtype=torch.float64)
        method.on_epoch_end(t)
        state = method.state()
        assert state["grad_magnitude"] == mg
        used.append(state["r"])
    assert used == REFERENCE_R


def test_rule_by_hand():
    rule = MPlusRule(start=0, maximum=3, gamma=2.0)
    assert rule.update(0, 0.0) == 1 and rule.threshold is None      # epoch 0: +1 whatever MG
    assert rule.update(1, 10.0) == 1 and rule.threshold == 20.0     # epoch 1: threshold only
    assert rule.update(2, 15.0) == 1 and rule.threshold == 20.0     # below: neither moves
    assert rule.update(3, 20.0) == 1 and rule.threshold == 20.0     # equal does not raise
    assert rule.update(4, 25.0) == 2 and rule.threshold == 50.0
    assert rule.update(5, 60.0) == 3 and rule.threshold == 120.0
    assert rule.update(6, 1e9) == 3 and rule.threshold == 120.0     # at the maximum: nothing moves
    capped = MPlusRule(start=5, maximum=2, gamma=1.01)
    assert capped.level == 2 and capped.update(0, 1.0) == 2
    restored = MPlusRule(start=0, maximum=3, gamma=2.0)
    restored.load_state_dict(rule.state_dict())
    assert (restored.level, restored.threshold) == (3, 120.0)


def test_grad_magnitude_weights_channels_and_ignores_batch_size():
    grad = torch.ones(2, 3, 2, 2)
    grad[0] *= -1
    assert grad_magnitude(grad, torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2 * 4 * (1 + 2 + 3))
    model = TinyNet()
    x, y = synthetic(8)

    def mg(xs, ys):
        xs = xs.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        return grad_magnitude(xs.grad, torch.ones(1)).item()

    assert mg(torch.cat([x, x]), torch.cat([y, y])) == pytest.approx(mg(x, y))   # mean loss: no growth with B


def test_mg_is_the_sum_over_minibatches_of_the_last_replay_gradient():
    std = torch.tensor([0.5])
    model, method, step, calls = make("mdeat", input_std=std)
    states, _ = run_epochs(model, method, step, 1, batches=3)      # r = 1: every step is a last replay
    expected = sum(0.5 * g.abs().sum().item() for g in calls)
    assert len(calls) == 3 and states[0]["grad_magnitude"] == pytest.approx(expected)


@pytest.mark.parametrize("name,level", [("mdeat", "r"), ("mpgd", "K")])
def test_processes_take_the_same_decision(name, level):
    local = {}
    a = make(name, all_reduce_sum=lambda t: t + local["b"])
    b = make(name, all_reduce_sum=lambda t: t + local["a"])
    alone = make(name)
    for epoch in range(5):
        for (model, method, step, _), seed in ((a, 0), (b, 7), (alone, 0)):
            for i in range(2):
                x, y = synthetic(24, seed=seed + i)
                method.train_batch(model, Batch(x, y, EPS, EPS / 2), step)
        local["a"], local["b"] = a[1].mg_sum.clone(), b[1].mg_sum.clone()
        expected_mg = (local["a"] + local["b"]).item()
        a[1].on_epoch_end(epoch)
        b[1].on_epoch_end(epoch)
        alone[1].on_epoch_end(epoch)
        assert a[1].state() == b[1].state()
        assert a[1].state()["grad_magnitude"] == pytest.approx(expected_mg)
        assert a[1].state()["grad_magnitude"] != alone[1].state()["grad_magnitude"]
        assert a[1].level == b[1].level


@pytest.mark.parametrize("name,params,extra", [
    ("mdeat", {}, 0), ("mpgd", {}, 1), ("mmart", {"k_start": 1}, 2),
])
def test_cost_is_the_level_per_epoch(name, params, extra):
    """mdeat: r passes per example; mpgd: K+1; mmart: K+2 (K >= 1)."""
    model, method, step, calls = make(name, gamma=0.5, **params)   # gamma < 1: the level keeps rising
    counter = ForwardCounter(model)
    states, passes = run_epochs(model, method, step, 4)
    levels = [s["r" if name == "mdeat" else "K"] for s in states]
    assert levels == [levels[0] + min(t, 1) + max(t - 2, 0) for t in range(4)]   # e.g. 1, 2, 2, 3
    assert passes == [lvl + extra for lvl in levels]
    assert counter.examples == pytest.approx(sum(passes) * 24 * 2)
    if name == "mdeat":
        assert len(calls) == 2 * sum(levels)                      # one step per replay


def test_state_dict_round_trip_restores_level_and_threshold():
    model, method, step, _ = make("mdeat", gamma=0.5)
    run_epochs(model, method, step, 3)
    state = torch.load(_saved(method.state_dict()), weights_only=False)
    _, fresh, _, _ = make("mdeat", gamma=0.5)
    fresh.load_state_dict(state)
    assert fresh.level == method.level == 3 and fresh.rule.threshold == method.rule.threshold is not None
    for m in (method, fresh):
        m.mg_sum = torch.tensor(1e9, dtype=torch.float64)
        m.on_epoch_end(3)
    assert fresh.state() == method.state() and fresh.level == 4


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _engine_run(tmp_path, method):
    cfg = TrainConfig(method=method, dataset="mnist-subset", train_subset=300, val_size=100, test_subset=100,
                      batch_size=50, val_steps=3, test_steps=3, epochs=3, out=str(tmp_path / method))
    summary = train(cfg, progress=False, echo=lambda s: None)
    records = [json.loads(l) for l in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def test_engine_mdeat_costs_the_sum_of_r(tmp_path):
    summary, records = _engine_run(tmp_path, "mdeat")
    assert [r["r"] for r in records][:2] == [1, 2]
    assert summary["passes_per_example"] == pytest.approx(sum(r["r"] for r in records))
    assert all(r["epoch_passes"] == pytest.approx(r["r"]) for r in records)
    assert records[0]["threshold"] is None and records[1]["threshold"] == pytest.approx(1.01 * records[1]["grad_magnitude"])


def test_engine_mpgd_costs_the_sum_of_k_plus_one(tmp_path):
    summary, records = _engine_run(tmp_path, "mpgd")
    assert [r["K"] for r in records][:2] == [0, 1]
    assert summary["passes_per_example"] == pytest.approx(sum(r["K"] + 1 for r in records))
