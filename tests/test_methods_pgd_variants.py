"""FAT, Amata and M+PGD: early stopping and its exact cost, the annealed K, feasibility, training, resume state."""

import pytest
import torch
from torch import nn

from fastrobust.methods import Batch
from fastrobust.methods.pgd import friendly_pgd
from helpers import ForwardCounter, TinyNet, synthetic
from test_methods_mplus import EPS, assert_feasible, make, record_inputs, run_epochs


class Constant(nn.Module):
    """Predicts class 0 whatever the input (its input gradient is 0)."""

    def forward(self, x):
        return torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("label,tau,steps_taken,passes", [
    (1, 0, 0, 1),      # misclassified at the start: stops at once, after one pass
    (1, 2, 2, 3),      # tau more steps, then stops at the next (misclassified) iterate
    (0, 0, 10, 10),    # never misclassified: all K steps
])
def test_friendly_pgd_stops_tau_steps_after_misclassification(label, tau, steps_taken, passes):
    model = Constant()
    counter = ForwardCounter(model)
    x = torch.rand(8, 1, 4, 4)
    x_adv, spent, taken = friendly_pgd(model, x, torch.full((8,), label), EPS, EPS / 4, 10, tau)
    assert spent == passes * 8 and counter.examples == passes * 8 and taken.tolist() == [steps_taken] * 8


def test_friendly_pgd_only_forwards_running_examples_and_stays_feasible():
    torch.manual_seed(0)
    model = TinyNet().train()
    counter = ForwardCounter(model)
    x, y = synthetic(32)
    x_adv, spent, taken = friendly_pgd(model, x, y, EPS, EPS / 4, 10, 1)
    assert model.training and spent == counter.examples < 10 * 32
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name,params", [("fat", {"steps": 5}), ("amata", {}), ("mpgd", {"k_start": 3})])
def test_reported_passes_match_work_done(name, params):
    model, method, step, calls = make(name, **params)
    counter, seen = ForwardCounter(model), record_inputs(model)
    x, y = synthetic(32)
    out = method.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    assert out.passes == counter.examples and len(calls) == 1
    if name != "fat":                                  # (fat forwards sub-batches: see friendly_pgd's tests)
        assert out.passes == (method.level + 1) * 32
        assert_feasible(seen, x)


def test_fat_reports_mean_steps():
    model, method, step, _ = make("fat", steps=5, tau=0)
    states, passes = run_epochs(model, method, step, 2)
    for s, p in zip(states, passes):
        assert 0 <= s["attack_steps"] <= 5 and p <= 6


def test_amata_anneals_k():
    model, method, step, _ = make("amata", epochs=4, k_min=2, k_max=10)
    states, passes = run_epochs(model, method, step, 4)
    assert [s["K"] for s in states] == [2, 5, 7, 10]                 # round(2 + 8 t / 3), half up
    assert passes == [3, 6, 8, 11]
    assert method.step_size(Batch(*synthetic(4), 0.1, 0.01), 5) == pytest.approx(0.05)   # 2.5 eps / K
    _, fresh, _, _ = make("amata", epochs=4, k_min=2, k_max=10)
    fresh.load_state_dict(method.state_dict())
    assert fresh.level == method.level == 10


def test_mpgd_alpha_and_k_zero_is_natural_training():
    model, method, step, calls = make("mpgd")
    x, y = synthetic(16)
    assert method.step_size(Batch(x, y, 0.1, 0.01), 4) == pytest.approx(0.025)
    assert method.step_size(Batch(x, y, 0.1, 0.05), 4) == pytest.approx(0.05)
    seen = record_inputs(model)
    out = method.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    assert method.level == 0 and out.passes == 16 and torch.equal(seen[0], x)
    assert calls[0].shape == x.shape                                   # the input gradient, for MG


@pytest.mark.parametrize("name", ["fat", "amata", "mpgd"])
def test_training_loss_decreases(name):
    params = {"fat": {"steps": 5}, "amata": {"k_max": 5}, "mpgd": {"k_start": 2}}[name]
    model, method, step, _ = make(name, **params)
    x, y = synthetic(96)
    losses = [method.train_batch(model, Batch(x, y, 0.05, 0.0125), step).loss.item() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
