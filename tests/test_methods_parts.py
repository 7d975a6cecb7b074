"""The parts methods are composed of, and what each named method does beyond the shared contract
(tests/test_methods_contract.py): attacks, losses, schedules, replay starts, the L2 threat model."""

import math

import pytest
import torch
from torch import nn

from fastrobust.attacks import pgd, threat_model
from fastrobust.config import TrainConfig, resolve
from fastrobust.data import DATASETS
from fastrobust.methods import Batch, Component, MethodContext, define, get_method, list_methods
from fastrobust.methods.gaat import gaat_attack
from fastrobust.methods.inputs import Ascent
from fastrobust.methods.losses import kl_per_example, mart_loss, trades_loss
from fastrobust.methods.strength import Schedule, level_param
from helpers import (EPS, ForwardCounter, TinyNet, assert_feasible, make_method, record_inputs, rows, run_epochs,
                     synthetic)


class Constant(nn.Module):
    """Predicts class 0 whatever the input (its input gradient is 0)."""

    def forward(self, x):
        return torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3) + 0 * x.flatten(1)[:, :1]


def bound(part, **values):
    ctx = MethodContext(num_classes=3, input_std=torch.ones(1), epochs=1, batches_per_epoch=1)
    return part.bind(ctx, {**{p.name: p.default for p in part.params()}, **values})


# ---- attacks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("label,tau,steps_taken,passes", [
    (1, 0, 0, 1),      # misclassified at the start: stops at once, after one pass
    (1, 2, 2, 3),      # tau more steps, then stops at the next (misclassified) iterate
    (0, 0, 10, 10),    # never misclassified: all K steps
])
def test_fat_early_stop_counts_tau_steps_after_misclassification(label, tau, steps_taken, passes):
    model = Constant()
    counter = ForwardCounter(model)
    attack = bound(Ascent(early_stop=True, attack_eval=True), tau=tau)
    x = torch.rand(8, 1, 4, 4)
    x_adv, spent, _ = attack(model, Batch(x, torch.full((8,), label), EPS, EPS / 4), 10, EPS / 4)
    attack.end_epoch(0)
    assert spent == passes * 8 and counter.examples == passes * 8
    assert attack.state()["attack_steps"] == steps_taken


def test_early_stop_only_forwards_running_examples_and_keeps_the_mode():
    torch.manual_seed(0)
    model = TinyNet().train()
    counter = ForwardCounter(model)
    x, y = synthetic(32)
    x_adv, spent, _ = bound(Ascent(early_stop=True, attack_eval=True), tau=1)(model, Batch(x, y, EPS, EPS / 4), 10, EPS / 4)
    assert model.training and spent == counter.examples < 10 * 32
    assert_feasible([x_adv], x)


def test_pgd_attack_takes_the_evaluation_pgds_steps():
    """The training attack and `fastrobust.attacks.pgd` share the threat model: same start, same iterates."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = synthetic(32)
    for norm in ("linf", "l2"):
        torch.manual_seed(5)
        expected = pgd(model, x, y, EPS, steps=5, alpha=EPS / 4, norm=norm, eval_mode=False)
        torch.manual_seed(5)
        _, method, _, _ = make_method("pgd", norm=norm)
        torch.manual_seed(5)
        x_adv, passes, grad = method.attack_(model, Batch(x, y, EPS, EPS / 4), 5, EPS / 4)
        assert torch.allclose(x_adv, expected, atol=1e-6) and passes == 5 * 32 and grad.shape == x.shape


def test_trades_attack_is_feasible_raises_the_kl_and_keeps_the_mode():
    torch.manual_seed(0)
    model = TinyNet().train()
    x, y = synthetic(32)
    attack = bound(Ascent(objective="kl", start="normal", attack_eval=True))
    x_adv, passes, _ = attack(model, Batch(x, y, EPS, EPS / 4), 10, EPS / 4)
    assert model.training and passes == pytest.approx(32 * (10 + 1 / 3))
    start, zero, _ = attack(model, Batch(x, y, EPS, EPS / 4), 0, EPS / 4)
    assert zero == 0 and (start - x).abs().max() <= 0.01                 # 0.001 N(0,1), projected
    assert_feasible([x_adv, start], x)
    with torch.no_grad():
        target = model(x)
        assert kl_per_example(target, model(x_adv)).sum() > kl_per_example(target, model(start)).sum()


def test_n_fgsm_starts_at_two_eps_steps_eps_and_does_not_project():
    torch.manual_seed(0)
    model, method, step, _ = make_method("n-fgsm")
    seen = record_inputs(model)
    x, y = synthetic(64)
    x = 0.3 + 0.4 * x                                  # away from the box's edges
    out = method.train_batch(model, Batch(x, y, EPS, EPS), step)
    start, trained = seen[0] - x, seen[1] - x
    assert EPS < start.abs().max() <= 2 * EPS + 1e-6   # the start reaches beyond eps, up to 2 eps
    assert trained.abs().max() > EPS + 1e-3            # not projected back to the eps-ball
    assert (trained - start).abs().max() == pytest.approx(EPS)   # one signed step of size alpha = eps
    assert out.passes == 2 * 64
    assert get_method("n-fgsm").default_alpha(0.3, 1 / 30, {"noise": 2.0}) == pytest.approx(0.3)


# ---- losses -------------------------------------------------------------------------------------
LOGITS_NAT = [[1.0, -0.5, 0.2], [0.3, 0.8, -1.0]]
LOGITS_ADV = [[0.2, 0.4, 0.1], [-0.3, 1.2, 0.0]]
Y, BETA = [0, 2], 6.0


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))


def test_trades_loss_by_hand():
    total = 0.0
    for zn, za, y in zip(LOGITS_NAT, LOGITS_ADV, Y):
        pn, pa = softmax(zn), softmax(za)
        total += -math.log(pn[y]) + BETA * kl(pn, pa)               # CE on x + beta KL(p(x) || p(x_adv))
    got = trades_loss(torch.tensor(LOGITS_NAT), torch.tensor(LOGITS_ADV), torch.tensor(Y), BETA)
    assert got.item() == pytest.approx(total / 2, rel=1e-5)


def test_mart_loss_by_hand():
    total = 0.0
    for zn, za, y in zip(LOGITS_NAT, LOGITS_ADV, Y):
        pn, pa = softmax(zn), softmax(za)
        runner_up = max(pa[j] for j in range(3) if j != y)
        total += -math.log(pa[y]) - math.log(1 - runner_up) + BETA * kl(pn, pa) * (1 - pn[y])
    got = mart_loss(torch.tensor(LOGITS_NAT), torch.tensor(LOGITS_ADV), torch.tensor(Y), BETA)
    assert got.item() == pytest.approx(total / 2, rel=1e-5)


# ---- schedules ----------------------------------------------------------------------------------
def test_amata_anneals_k_and_its_step():
    model, method, step, _ = make_method("amata", epochs=4, k_min=2, k_max=10)
    states, passes = run_epochs(model, method, step, 4)
    assert [s["K"] for s in states] == [2, 5, 7, 10]                 # round(2 + 8 t / 3), half up
    assert passes == [3, 6, 8, 11]
    assert method.schedule_.step_size(Batch(*synthetic(4), 0.1, 0.01), 5) == pytest.approx(0.05)   # 2.5 eps / K


def test_deat_d_schedule():
    _, method, _, _ = make_method("deat-d", d=3, r_max=5)
    used = []
    for epoch in range(20):
        method.on_epoch_end(epoch)
        used.append(method.state()["r"])
    assert used == [min(t // 3 + 1, 5) for t in range(20)]


@pytest.mark.parametrize("p,expected", [(0.0, [1, 2, 3, 3, 3]), (1.0, [1, 1, 1, 1, 1])])
def test_deat_p_raises_r_on_last_replay_accuracy(p, expected):
    model, method, step, _ = make_method("deat-p", p=p, r_max=3)
    states, passes = run_epochs(model, method, step, 5)
    assert [s["r"] for s in states] == expected and passes == expected
    assert all(0.0 <= s["replay_acc"] <= 1.0 for s in states)


def test_deat_p_accuracy_is_summed_over_processes():
    local = {}
    a = make_method("deat-p", p=0.5, all_reduce_sum=lambda t: t + local["b"])[1]
    b = make_method("deat-p", p=0.5, all_reduce_sum=lambda t: t + local["a"])[1]
    a.schedule_.counts = torch.tensor([9.0, 10.0], dtype=torch.float64)
    b.schedule_.counts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    local["a"], local["b"] = a.schedule_.counts.clone(), b.schedule_.counts.clone()
    a.on_epoch_end(0)
    b.on_epoch_end(0)
    assert a.state()["replay_acc"] == b.state()["replay_acc"] == 0.45 and a.schedule_.level == b.schedule_.level == 1


# ---- replays ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deat-d", "deat-p", "mdeat", "free"])
def test_replays_are_feasible_and_move(name):
    model, method, step, calls = make_method(name)
    method.schedule_.level = 3
    seen = record_inputs(model)
    x, y = synthetic(32)
    method.train_batch(model, Batch(x, y, EPS, EPS / 2), step)
    assert len(calls) == 3
    assert_feasible(seen, x)                           # every replay's input: x + delta, delta feasible
    assert not torch.equal(seen[0], seen[1])           # delta moved between replays


def test_uniform_start_is_fresh_and_carry_start_is_carried():
    model, method, step, _ = make_method("free", start="uniform")
    x, y = synthetic(16)
    seen = record_inputs(model)
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert method.attack_.delta is None and not torch.equal(seen[0], x)    # Free-m of DEAT's table
    model, method, step, _ = make_method("free", replays=2)
    seen = record_inputs(model)
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert torch.equal(seen[0], x)                     # zero start at first
    carried = method.attack_.delta.clone()
    assert 0 < carried.abs().max() <= EPS + 1e-6
    method.on_epoch_end(0)                             # carried across epochs too
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert torch.allclose(seen[2], x + carried)
    x2, y2 = synthetic(10, seed=1)                     # a smaller (last) batch reuses the first rows
    before = method.attack_.delta.clone()
    method.train_batch(model, Batch(x2, y2, EPS, EPS), step)
    assert method.attack_.delta.shape[0] == 16 and torch.equal(method.attack_.delta[10:], before[10:])


# ---- the L2 threat model -------------------------------------------------------------------------
# n-fgsm's and n-aaer's noise is twice eps by design; fgsm-pco trains on x + beta delta' (beta 1.5, not clipped, as
# its reference); fgsm-rs-cs's and elle's steps are not projected back (their rules, as the benchmark runs them)
@pytest.mark.parametrize("name", [c.name for c in list_methods()
                                  if c.name not in ("n-fgsm", "n-aaer", "fgsm-pco", "fgsm-rs-cs", "elle")])
def test_every_forwarded_input_is_in_the_l2_ball(name):
    eps = 0.5
    model, method, step, _ = make_method(name, norm="l2", eps=eps, alpha=eps / 4,
                                         **({"k_start": 2} if name in ("mpgd", "mgaat", "mtrades", "mmart") else {}))
    if name == "nuat":   # its first epoch (lambda 0) is clean training: no attack to check
        method.on_epoch_end(0)
    seen = record_inputs(model)
    x, y = synthetic(32)
    method.train_batch(model, Batch(x, y, eps, eps / 4, rows(32)), step)
    seen = [inp for inp in seen if len(inp) == len(x)]     # (sub-batches of early-stopped attacks: rows unknown)
    for inp in seen:
        assert (inp - x).flatten(1).norm(dim=1).max() <= eps + 1e-5 and inp.min() >= 0 and inp.max() <= 1
    assert any((inp - x).flatten(1).norm(dim=1).max() > eps / 4 for inp in seen) or name == "natural"


def test_gaat_with_tau_zero_is_l2_pgd():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = synthetic(48)
    expected = pgd(model, x, y, 0.5, steps=6, alpha=0.1, norm="l2", eval_mode=False,
                   generator=torch.Generator().manual_seed(1))
    x_adv, _, _ = gaat_attack(model, x, y, 0.5, 0.1, 6, tau=0.0, check_every=1, threat=threat_model("l2"),
                              generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_l2_defaults():
    for dataset, eps in (("mnist", 2.0), ("cifar10", 0.5)):
        cfg = resolve(TrainConfig(method="pgd", dataset=dataset, norm="l2"), DATASETS[dataset], get_method("pgd"))
        assert cfg.eps == eps and cfg.alpha == pytest.approx(2.5 * eps / 10)   # no recipe: 2.5 eps / K


# ---- composition ----------------------------------------------------------------------------------
def test_a_new_combination_is_one_registration(monkeypatch):
    """FAT's early stop inside an Amata-style schedule: no new class, the contract holds."""
    from fastrobust.methods import registry
    from fastrobust.methods.strength import Linear

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    define("fat-amata", "FAT's early stop with Amata's growing K (a test).",
           attack=Ascent(early_stop=True, attack_eval=True), schedule=Linear(k_min=1, k_max=3))
    model, method, step, _ = make_method("fat-amata", epochs=3)
    states, passes = run_epochs(model, method, step, 3)
    assert [s["K"] for s in states] == [1, 2, 3] and all("attack_steps" in s for s in states)
    assert {p.name for p in method.params} == {"k_min", "k_max", "step_scale", "attack_eval", "tau"}


def test_two_parts_with_one_parameter_name_are_refused():
    with pytest.raises(ValueError, match="both define"):
        define("clash", "two steps parameters", attack=Ascent(),
               schedule=Schedule(level_param("attack_eval", 1, "clashes")))
