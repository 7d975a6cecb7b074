"""The M+ rule, the gradient magnitude MG, and the M+ methods' cost, process agreement and resume state.

"""

import io
import json

import pytest
import torch

from fastrobust.config import TrainConfig
from fastrobust.engine import train
from fastrobust.errors import ConfigError
from fastrobust.methods import Batch, get_method
from fastrobust.methods.mplus import MPlusRule, grad_magnitude
from helpers import EPS, ForwardCounter, TinyNet, make_method, run_epochs, synthetic

# METHODS.md: M+DEAT's replay count in the reference run, epoch by epoch (r used DURING the epoch)
REFERENCE_R = [1] + [2] * 2 + [3] * 5 + [4] * 19 + [5] * 2 + [6] * 13 + [7] * 2 + [8] * 6


def make(name, **kwargs):
    model, method, step, calls = make_method(name, **kwargs)
    return model, method, step, calls


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
        rule.update(mg)
    assert used == REFERENCE_R and sum(used) == 246


def test_mdeat_follows_the_reference_trajectory_through_on_epoch_end():
    _, method, _, _ = make("mdeat")
    used = []
    for t, mg in enumerate(reference_mgs()):
        method.schedule_.mg_sum = torch.tensor(mg, dtype=torch.float64)
        method.on_epoch_end(t)
        state = method.state()
        assert state["grad_magnitude"] == mg
        used.append(state["r"])
    assert used == REFERENCE_R


def test_rule_by_hand():
    rule = MPlusRule(start=0, maximum=3, gamma=2.0)
    assert rule.update(0.0) == 1 and rule.threshold is None      # epoch 0: +1 whatever MG
    assert rule.update(10.0) == 1 and rule.threshold == 20.0     # epoch 1: threshold only
    assert rule.update(15.0) == 1 and rule.threshold == 20.0     # below: neither moves
    assert rule.update(20.0) == 1 and rule.threshold == 20.0     # equal does not raise
    assert rule.update(25.0) == 2 and rule.threshold == 50.0
    assert rule.update(60.0) == 3 and rule.threshold == 120.0
    assert rule.update(1e9) == 3 and rule.threshold == 120.0     # at the maximum: nothing moves
    capped = MPlusRule(start=5, maximum=2, gamma=1.01)
    assert capped.level == 2 and capped.update(1.0) == 2
    restored = MPlusRule(start=0, maximum=3, gamma=2.0)
    restored.load_state_dict(rule.state_dict())
    assert (restored.level, restored.threshold, restored.epochs) == (3, 120.0, 7)
    early = MPlusRule(start=0, maximum=3, gamma=2.0)
    early.update(0.0)
    back = early.state_dict()                 # after the rule's epoch 0: level 1, no threshold yet
    early.update(10.0)
    early.load_state_dict(back)               # restored (the collapse guard): epoch 1 comes again
    assert early.update(4.0) == 1 and early.threshold == 8.0 and early.update(9.0) == 2
    old = MPlusRule(start=0, maximum=3, gamma=2.0)
    old.load_state_dict({"level": 2, "threshold": 50.0})     # a checkpoint from before the count was kept
    assert old.epochs == 2 and old.update(60.0) == 3


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


def test_rule_reach_floor_raises_k_while_k_steps_cannot_cross_the_ball():
    rule = MPlusRule(start=0, maximum=7, gamma=1.01, floor=True)
    levels = [rule.level]
    for t in range(8):       # MG falls: only the floor can raise K (alpha 2/255 at eps 8/255: K = 4 reaches)
        rule.update(100.0 - t, reaches=rule.level * 2 >= 8)
        levels.append(rule.level)
    assert levels == [0, 1, 1, 2, 3, 4, 4, 4, 4]
    assert rule.threshold == pytest.approx(1.01 * 96.0)                # moved with the last (floor) raise


def test_mpgd_default_alpha_reaches_and_a_small_alpha_is_refused():
    cls = get_method("mpgd")
    params = cls.resolve_params({})
    assert cls.default_alpha(8 / 255, 0.25, params) == pytest.approx(2 / 255)    # the paper's constant step
    assert cls.default_alpha(0.3, 1 / 30, params) == pytest.approx(2.5 * 0.3 / 7)  # MNIST: 7 steps reach
    with pytest.raises(ConfigError, match="cannot cross the eps-ball"):
        cls.check_config(0.3, 0.01, params)
    cls.check_config(0.3, 0.01, cls.resolve_params({"step_rule": "eps-over-k"}))   # eps/K always reaches


def test_step_rules():
    _, method, _, _ = make("mpgd")
    batch = Batch(*synthetic(4), 0.1, 0.01)
    assert method.schedule_.step_size(batch, 4) == pytest.approx(0.01)            # constant (paper)
    _, method, _, _ = make("mpgd", step_rule="eps-over-k")
    assert method.schedule_.step_size(batch, 4) == pytest.approx(0.025)           # max(eps/K, alpha)
    assert method.schedule_.step_size(Batch(*synthetic(4), 0.1, 0.05), 4) == pytest.approx(0.05)


def test_k_zero_trains_on_the_random_start_and_measures_nothing():
    model, method, step, _ = make("mpgd")
    seen = []
    model.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    x, y = synthetic(16)
    out = method.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    assert method.schedule_.level == 0 and out.passes == 16 and len(seen) == 1
    assert 0 < (seen[0] - x).abs().max() <= EPS + 1e-6                 # x + U(-eps, eps), not x
    assert method.schedule_.mg_sum.item() == 0.0


def test_rule_epochs_count_from_the_first_epoch_at_full_eps():
    model, method, step, _ = make("mpgd", gamma=0.5)
    method.ctx.eps_warmup = 1.5        # epochs 0 and 1 ramp eps: the rule starts after epoch 2
    states, _ = run_epochs(model, method, step, 5)
    assert [s["K"] for s in states] == [0, 0, 0, 1, 1]
    assert states[1]["threshold"] is None and states[3]["threshold"] is not None


@pytest.mark.parametrize("name,last", [("mtrades", True), ("mmart", True), ("mpgd", False), ("mgaat", False)])
def test_mg_over_all_minibatches_or_the_last_as_the_papers_code(name, last):
    _, method, _, _ = make(name)
    grads = [torch.full((4, 1, 4, 4), v) for v in (1.0, 2.0, 3.0)]
    for g in grads:
        method.schedule_.observe(None, None, g)
    method.on_epoch_end(0)
    expected = 3.0 * 64 if last else 6.0 * 64
    assert method.state()["grad_magnitude"] == pytest.approx(expected)


def test_mg_is_the_sum_over_minibatches_of_the_last_replay_gradient():
    std = torch.tensor([0.5])
    model, method, step, calls = make("mdeat", input_std=std)
    states, _ = run_epochs(model, method, step, 1, batches=3)      # r = 1: every step is a last replay
    expected = sum(0.5 * g.abs().sum().item() for g in calls)
    assert len(calls) == 3 and states[0]["grad_magnitude"] == pytest.approx(expected)


@pytest.mark.parametrize("name,params", [("mdeat", {}), ("mpgd", {"k_start": 1})])
def test_processes_take_the_same_decision(name, params):
    local = {}
    a = make(name, all_reduce_sum=lambda t: t + local["b"], **params)
    b = make(name, all_reduce_sum=lambda t: t + local["a"], **params)
    alone = make(name, **params)
    for epoch in range(5):
        for (model, method, step, _), seed in ((a, 0), (b, 7), (alone, 0)):
            for i in range(2):
                x, y = synthetic(24, seed=seed + i)
                method.train_batch(model, Batch(x, y, EPS, EPS / 2), step)
        local["a"], local["b"] = a[1].schedule_.mg_sum.clone(), b[1].schedule_.mg_sum.clone()
        expected_mg = (local["a"] + local["b"]).item()
        a[1].on_epoch_end(epoch)
        b[1].on_epoch_end(epoch)
        alone[1].on_epoch_end(epoch)
        assert a[1].state() == b[1].state()
        assert a[1].state()["grad_magnitude"] == pytest.approx(expected_mg)
        assert a[1].state()["grad_magnitude"] != alone[1].state()["grad_magnitude"]
        assert a[1].schedule_.level == b[1].schedule_.level


@pytest.mark.parametrize("name,params,extra", [
    ("mdeat", {}, 0), ("mpgd", {}, 1), ("mmart", {"k_start": 1}, 2), ("mgaat", {"tau": 0.0, "check_every": 1}, 1),
])
def test_cost_is_the_level_per_epoch(name, params, extra):
    """mdeat: r passes per example; mpgd: K+1; mmart: K+2 (K >= 1); mgaat with tau 0: exactly M+PGD's."""
    model, method, step, calls = make(name, gamma=0.5, **params)   # gamma < 1: the level keeps rising
    counter = ForwardCounter(model)
    states, passes = run_epochs(model, method, step, 4)
    levels = [s["r" if name == "mdeat" else "K"] for s in states]
    assert levels == [levels[0] + min(t, 1) + max(t - 2, 0) for t in range(4)]   # e.g. 1, 2, 2, 3
    assert passes == [lvl + extra for lvl in levels]
    if name != "mgaat":       # (GAAT forwards the check without a backward: its count is in the contract test)
        assert counter.examples == pytest.approx(sum(passes) * 24 * 2)
    if name == "mdeat":
        assert len(calls) == 2 * sum(levels)                      # one step per replay


def test_state_dict_round_trip_restores_level_and_threshold():
    model, method, step, _ = make("mdeat", gamma=0.5)
    run_epochs(model, method, step, 3)
    state = torch.load(_saved(method.state_dict()), weights_only=False)
    _, fresh, _, _ = make("mdeat", gamma=0.5)
    fresh.load_state_dict(state)
    a, b = method.schedule_, fresh.schedule_
    assert b.level == a.level == 3 and b.rule.threshold == a.rule.threshold is not None
    for m in (method, fresh):
        m.schedule_.mg_sum = torch.tensor(1e9, dtype=torch.float64)
        m.on_epoch_end(3)
    assert fresh.state() == method.state() and b.level == 4


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _engine_run(tmp_path, method):
    cfg = TrainConfig(method=method, dataset="mnist-subset", train_subset=300, val_size=100, test_subset=100,
                      batch_size=50, val_steps=3, test_steps=3, epochs=3, eps_warmup=0, out=str(tmp_path / method))
    summary = train(cfg, progress=False, echo=lambda s: None)
    records = [json.loads(l) for l in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@pytest.mark.slow
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
