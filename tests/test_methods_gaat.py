"""GAAT (fastrobust's reconstruction): PGD equivalence at tau = 0, linear losses, feasibility, exact cost, training."""

import json

import pytest
import torch
from torch import nn

from fastrobust.attacks import pgd
from fastrobust.config import TrainConfig
from fastrobust.engine import train
from fastrobust.methods import FORWARD, BACKWARD
from fastrobust.methods.gaat import gaat_attack
from helpers import ForwardCounter, TinyNet, synthetic
from helpers import EPS, make_method as make, run_epochs


def attack(model, x, y, seed=1, **kw):
    args = dict(eps=EPS, alpha=EPS / 4, steps=10, tau=0.3, check_every=1, order=1)
    args.update(kw)
    x_adv, st, _ = gaat_attack(model, x, y, generator=torch.Generator().manual_seed(seed), **args)
    return x_adv, st


@pytest.mark.parametrize("train_mode", [True, False])
def test_tau_zero_is_exactly_pgd(train_mode):
    torch.manual_seed(0)
    model = TinyNet().train(train_mode)
    x, y = synthetic(48)
    counter = ForwardCounter(model)
    expected = pgd(model, x, y, EPS, steps=10, alpha=EPS / 4, eval_mode=False,
                   generator=torch.Generator().manual_seed(1))
    pgd_forwards = counter.examples
    x_adv, st = attack(model, x, y, tau=0.0, eval_mode=False)
    assert torch.equal(x_adv, expected)
    assert counter.examples - pgd_forwards == pgd_forwards == 10 * 48     # the same K gradient evaluations
    assert st.true_grads == 10 * 48 and st.approximated == 0 and st.passes == pytest.approx(10 * 48)


def test_linear_loss_needs_one_true_gradient_per_example():
    # two-class logistic regression with a small margin change over the ball: CE is ~linear in delta
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x, y = synthetic(40, classes=2)
    backward = ForwardCounter(model, backward=True)
    forward = ForwardCounter(model)
    x_adv, st = attack(model, x, y, eps=0.01, alpha=0.0025, steps=10, tau=0.05)
    assert st.remainder_sum / st.checks < 0.01
    assert st.true_grads == 40 and backward.examples == 40          # the start's gradient only
    assert forward.examples == 40 + 9 * 40                           # plus one check forward per later step
    assert st.passes == pytest.approx(40 + 9 * 40 * FORWARD)
    # the sign of a linear model's gradient never changes, so the approximation takes PGD's steps
    expected = pgd(model, x, y, 0.01, steps=10, alpha=0.0025, eval_mode=False, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x_adv, expected)


def test_margin_of_a_linear_model_has_zero_remainder():
    # with two classes the CE of a linear model is softplus(-margin): check the approximation error shrinks with eps
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x, y = synthetic(40, classes=2)
    rems = [attack(model, x, y, eps=e, alpha=e / 4, tau=10.0)[1] for e in (0.04, 0.01, 0.0025)]
    means = [s.remainder_sum / s.checks for s in rems]
    assert means[0] > means[1] > means[2] and means[2] < 1e-3


@pytest.mark.parametrize("order,check_every,tau", [(1, 1, 0.3), (2, 1, 0.3), (1, 3, 0.05), (2, 2, 1.0), (1, 1, 0.0)])
def test_perturbation_stays_in_ball_and_box_and_cost_is_what_was_done(order, check_every, tau):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = synthetic(64)
    x[:8] = 0.0            # pixels on the box's edge
    forward, backward = ForwardCounter(model), ForwardCounter(model, backward=True)
    x_adv, st = attack(model, x, y, eps=0.2, alpha=0.05, tau=tau, check_every=check_every, order=order)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert st.passes == pytest.approx(forward.examples * FORWARD + backward.examples * BACKWARD)
    assert st.true_grads + st.approximated == st.steps == 64 * 10
    assert st.checks == 64 * ((10 - 1) // check_every)


def test_larger_tau_trusts_more_and_costs_less():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = synthetic(64)
    stats = [attack(model, x, y, eps=0.3, alpha=0.05, tau=tau)[1] for tau in (0.0, 0.1, 0.5, 100.0)]
    shares = [s.approximated / s.steps for s in stats]
    passes = [s.passes for s in stats]
    assert shares == sorted(shares) and shares[0] == 0 and shares[-1] == pytest.approx(0.9)
    assert passes[-1] < passes[0]


def test_gaat_trains_and_reports_its_statistics():
    model, method, step, calls = make("gaat", steps=5, tau=0.3, check_every=1, alpha=EPS / 2)
    states, passes = run_epochs(model, method, step, epochs=2)
    for state, p in zip(states, passes):
        assert 0 <= state["approx_share"] <= 0.8 + 1e-9                 # the first of 5 steps is always true
        assert 1 <= state["true_grads_per_example"] <= 5
        assert p == pytest.approx(state["attack_passes_per_example"] + 1)  # + the weight step
        assert state["mean_remainder"] >= 0
    assert len(calls) == 2 * 2                                            # one weight step per minibatch


@pytest.mark.slow
def test_gaat_through_the_engine(tmp_path):
    cfg = TrainConfig(method="gaat", method_params={"steps": 5}, epochs=2, train_subset=300, val_size=100,
                      test_subset=100, out=str(tmp_path / "run"), device="cpu")
    summary = train(cfg, progress=False)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"approx_share", "mean_remainder", "true_grads_per_example"} <= r.keys() for r in records)
    expected = sum(r["attack_passes_per_example"] + 1 for r in records)
    assert summary["passes_per_example"] == pytest.approx(expected)
    assert summary["passes_per_example"] < 2 * 6                         # cheaper than PGD-5's 6 per epoch


def test_graph_free_checks_refresh_as_sub_batches_with_the_same_steps():
    # tau 0, a check every step: every example is refreshed at every check. With the graph kept
    # that is one backward through the check forward (exactly PGD's K forwards); without it the
    # refresh re-runs forward and backward, so the forwards about double but the steps are PGD's.
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = synthetic(48)
    expected = pgd(model, x, y, EPS, steps=10, alpha=EPS / 4, generator=torch.Generator().manual_seed(1))
    forward, backward = ForwardCounter(model), ForwardCounter(model, backward=True)
    x_adv, st = attack(model, x, y, tau=0.0, eval_mode=True, check_graph=False)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    refreshed = st.true_grads - 48                   # nearly all (an example whose loss did not move has rho 0)
    assert refreshed > 0.9 * 9 * 48
    assert forward.examples == 48 + 9 * 48 + refreshed and backward.examples == st.true_grads
    assert st.passes == pytest.approx(48 + 9 * 48 * FORWARD + refreshed)


def test_graph_free_checks_decide_like_graph_checks():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = synthetic(64)
    kept, st_kept = attack(model, x, y, tau=0.3, check_every=2, eval_mode=True)
    free, st_free = attack(model, x, y, tau=0.3, check_every=2, eval_mode=True, check_graph=False)
    assert torch.allclose(kept, free, atol=1e-6)
    assert (st_kept.true_grads, st_kept.approximated) == (st_free.true_grads, st_free.approximated)
    assert 64 < st_free.true_grads < 5 * 64          # some examples were refreshed, not all


def test_adaptive_tau_falls_while_the_remainder_grows_and_returns_where_it_is_steady():
    from fastrobust.methods.gaat import AdaptiveTau

    control, tau = AdaptiveTau(), 0.3
    steady = torch.full((8,), 0.1)
    assert control.tau(tau, steady) == tau                      # the first check: no history
    for _ in range(5):
        assert float(control.tau(tau, steady)) == pytest.approx(tau)
    grown = [float(control.tau(tau, torch.full((8,), 1.0))) for _ in range(30)]
    assert grown[0] == pytest.approx(tau) and grown[1] < grown[0]          # lowered as soon as it grows
    assert tau / AdaptiveTau.MAX_FACTOR <= min(grown) < tau / 4
    held = [float(control.tau(tau, torch.full((8,), 1.0))) for _ in range(5000)]
    assert held[-1] == pytest.approx(tau, rel=1e-2)             # a remainder that stays high is the new steady level
    saved = AdaptiveTau()
    saved.load_state_dict(control.state_dict(), "cpu")
    assert float(saved.tau(tau, steady)) == float(control.tau(tau, steady))


def test_gaat_adapt_trains_and_resumes_its_threshold_exactly():
    from fastrobust.methods import Batch

    model, method, step, _ = make("gaat", steps=4, adapt=True)
    for b in range(3):
        method.train_batch(model, Batch(*synthetic(24, seed=b), EPS, EPS / 4), step)
    state = method.state_dict()
    assert state["attack"]["adapt"]["fast"] is not None
    _, fresh, _, _ = make("gaat", steps=4, adapt=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.parts["attack"].control.slow, method.parts["attack"].control.slow)
