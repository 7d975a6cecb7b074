"""Tests for fastrobust.attacks: constraints, side effects, optimality on linear models, restarts and early stop."""

import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fastrobust.attacks import (
    attack_loss, fgsm, margin_loss, pgd, preserved_mode, project_l2, project_linf, random_start, robust_accuracy,
)
from fastrobust.errors import ConfigError

TOL = 1e-6


class Linear2(nn.Module):
    """Two-class linear model with logits ``[0, w.x + b]``."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(torch.tensor(float(b)))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def tiny_cnn(classes: int = 5) -> nn.Sequential:
    """Random-init conv net for 3x8x8 inputs, with batch norm and dropout (mode-dependent layers)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(4 * 8 * 8, classes),
    )


def images(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images with some pixels exactly at 0 and 1, so the box constraint binds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.where(x < 0.1, 0.0, torch.where(x > 0.9, 1.0, x))
    return x, torch.randint(0, 5, (n,), generator=g)


@pytest.fixture(scope="module")
def trained():
    """An MLP trained to high accuracy on a separable 2-class problem in [0, 1]^20, and a test set."""
    g = torch.Generator().manual_seed(0)

    def data(n):
        x = torch.rand(n, 20, generator=g)
        return x, (x[:, :5].mean(1) > 0.5).long()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = data(512)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    x_test, y_test = data(256)
    assert robust_accuracy(model, x_test, y_test, None) > 0.9
    return model, x_test, y_test


def assert_feasible(x_adv, x, eps, norm="linf"):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + TOL


ATTACKS = {
    "fgsm": functools.partial(fgsm, eps=0.1),
    "fgsm-rs": functools.partial(fgsm, eps=0.1, alpha=0.125, random_start=True),
    "pgd": functools.partial(pgd, eps=0.1, steps=5),
    "pgd-zero-start": functools.partial(pgd, eps=0.1, steps=5, random_start=False),
    "pgd-restarts": functools.partial(pgd, eps=0.1, steps=3, restarts=3),
    "pgd-early-stop": functools.partial(pgd, eps=0.1, steps=5, early_stop=True),
    "pgd-cw": functools.partial(pgd, eps=0.1, steps=5, loss="cw"),
    "pgd-l2": functools.partial(pgd, eps=0.5, steps=5, norm="l2"),
    "pgd-l2-all": functools.partial(pgd, eps=0.5, steps=3, norm="l2", loss="cw", restarts=2, early_stop=True),
}


def norm_of(attack):
    return attack.keywords.get("norm", "linf"), attack.keywords["eps"]


@pytest.mark.parametrize("name", ATTACKS)
def test_random_net_perturbation_is_feasible(name):
    x, y = images()
    x_adv = ATTACKS[name](tiny_cnn(), x, y)
    norm, eps = norm_of(ATTACKS[name])
    assert_feasible(x_adv, x, eps, norm)
    assert not torch.equal(x_adv, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACKS)
def test_trained_model_perturbation_is_feasible_and_effective(name, trained):
    model, x, y = trained
    x_adv = ATTACKS[name](model, x, y)
    norm, eps = norm_of(ATTACKS[name])
    assert_feasible(x_adv, x, eps, norm)
    assert robust_accuracy(model, x_adv, y, None) < robust_accuracy(model, x, y, None)


@pytest.mark.parametrize("eval_mode", [True, False])
@pytest.mark.parametrize("with_grads", [False, True])
@pytest.mark.parametrize("name", ["fgsm", "pgd-restarts", "pgd-early-stop", "pgd-l2-all"])
def test_model_state_is_untouched(name, eval_mode, with_grads):
    model = tiny_cnn().train()
    model[1].eval()  # mixed mode: batch norm in eval, the rest in train
    model[0].bias.requires_grad_(False)
    if with_grads:
        for p in model.parameters():
            p.grad = torch.randn_like(p)
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.named_parameters()}
    grads = {k: None if p.grad is None else (p.grad, p.grad.clone()) for k, p in model.named_parameters()}
    flags = [p.requires_grad for p in model.parameters()]
    seen = []
    model[3].register_forward_pre_hook(lambda m, args: seen.append(m.training))

    x, y = images()
    ATTACKS[name](model, x, y, eval_mode=eval_mode)

    assert seen and all(mode is not eval_mode for mode in seen)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, p in model.named_parameters():
        assert torch.equal(p, state[k])
        if grads[k] is None:
            assert p.grad is None
        else:
            assert p.grad is grads[k][0] and torch.equal(p.grad, grads[k][1])


def test_mode_is_restored_on_exception():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.BatchNorm2d(3), Boom()).train()
    model[0].eval()
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, *images(), eps=0.1)
    assert [m.training for m in model.modules()] == [True, False, True]
    with pytest.raises(RuntimeError), preserved_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError
    assert [m.training for m in model.modules()] == [True, False, True]


def test_works_inside_no_grad_and_with_grad_requiring_input():
    x, y = images()
    x.requires_grad_(True)
    with torch.no_grad():
        x_adv = pgd(tiny_cnn(), x, y, eps=0.1, steps=3)
    assert x.grad is None
    assert_feasible(x_adv, x.detach(), 0.1)
    assert not torch.equal(x_adv, x.detach())


def linear_problem(n=400, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g)  # eps <= 0.1 never reaches the [0, 1] box
    b = -float(x.mean(0) @ w)
    z = x @ w + b
    return Linear2(w, b), x, (z > 0).long(), z


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.1)])
@pytest.mark.parametrize("start", [False, True])
def test_pgd_is_optimal_on_linear_model(loss, norm, eps, start):
    model, x, y, z = linear_problem()
    dual = model.w.detach().abs().sum() if norm == "linf" else model.w.detach().norm()
    reachable = z.abs() < eps * dual  # an adversarial example exists iff the margin is below eps * ||w||_*
    clear = (z.abs() - eps * dual).abs() > 1e-3
    assert reachable[clear].any() and (~reachable[clear]).any()
    x_adv = pgd(model, x, y, eps, steps=30, alpha=eps / 4, norm=norm, loss=loss, random_start=start,
                generator=torch.Generator().manual_seed(1))
    assert_feasible(x_adv, x, eps, norm)
    fooled = model(x_adv).argmax(1) != y
    assert torch.equal(fooled[clear], reachable[clear])


def test_fgsm_is_one_signed_step_of_eps():
    model, x, y, _ = linear_problem()
    w_sign = model.w.detach().sign()
    expected = x + 0.05 * torch.where(y[:, None] == 1, -w_sign, w_sign)  # lowers the true class' logit
    torch.testing.assert_close(fgsm(model, x, y, 0.05), expected, rtol=0, atol=TOL)


def test_default_alpha_is_2_5_eps_over_steps(trained):
    model, x, y = trained

    def run(**kw):
        return pgd(model, x, y, 0.1, steps=4, generator=torch.Generator().manual_seed(3), **kw)

    assert torch.equal(run(), run(alpha=2.5 * 0.1 / 4))
    assert not torch.equal(run(), run(alpha=0.1 / 4))


def test_generator_makes_runs_reproducible(trained):
    model, x, y = trained

    def run(seed):
        return pgd(model, x, y, 0.05, restarts=2, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_restarts_never_raise_robust_accuracy(trained):
    model, x, y = trained

    def acc(restarts, loss):
        # One short step, so that the random start matters.
        attack = functools.partial(pgd, eps=0.05, steps=1, alpha=0.02, restarts=restarts, loss=loss,
                                   generator=torch.Generator().manual_seed(0))
        return robust_accuracy(model, x, y, attack)

    for loss in ("ce", "cw"):
        assert acc(10, loss) <= acc(3, loss) <= acc(1, loss) < robust_accuracy(model, x, y, None)


def test_early_stopped_pgd_monotone_in_steps(trained):
    model, x, y = trained

    def acc(steps):
        attack = functools.partial(pgd, eps=0.05, steps=steps, alpha=0.01, random_start=False, early_stop=True)
        return robust_accuracy(model, x, y, attack)

    clean = robust_accuracy(model, x, y, None)
    assert acc(10) <= acc(5) <= acc(2) <= clean


def test_early_stop_freezes_examples_misclassified_at_the_start():
    model, x, y = tiny_cnn(), *images(n=32)
    model.eval()
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert wrong.any() and (~wrong).any()
    x_adv = pgd(model, x, y, 0.1, steps=5, random_start=False, early_stop=True)
    assert torch.equal(x_adv[wrong], x[wrong])
    assert not torch.equal(x_adv[~wrong], x[~wrong])

    start = (x + random_start(x, 0.1, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    with torch.no_grad():
        wrong = model(start).argmax(1) != y
    x_adv = pgd(model, x, y, 0.1, steps=5, early_stop=True, generator=torch.Generator().manual_seed(2))
    assert wrong.any() and torch.equal(x_adv[wrong], start[wrong])


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.1)])
def test_early_stop_sub_batch_and_masked_paths_agree(norm, eps):
    model, x, y, _ = linear_problem(n=64)  # same output in train and eval mode
    model.train()
    sub_batch, masked = (
        pgd(model, x, y, eps, norm=norm, steps=8, early_stop=True, eval_mode=eval_mode,
            generator=torch.Generator().manual_seed(0))
        for eval_mode in (True, False)
    )
    torch.testing.assert_close(sub_batch, masked, rtol=0, atol=TOL)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_autocast_and_channels_last(norm, eps):
    model, (x, y) = tiny_cnn().eval(), images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps, steps=3, norm=norm, restarts=2, early_stop=True)
    assert_feasible(x_adv, x, eps, norm)
    model = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert_feasible(pgd(model, x_cl, y, eps, steps=3, norm=norm), x, eps, norm)


def test_losses():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    y = torch.tensor([0, 2])
    torch.testing.assert_close(margin_loss(logits, y), torch.tensor([2.0, -3.5]))
    torch.testing.assert_close(attack_loss(logits, y, "cw"), margin_loss(logits, y))
    torch.testing.assert_close(attack_loss(logits.bfloat16(), y, "ce"), F.cross_entropy(logits, y, reduction="none"),
                               rtol=1e-2, atol=1e-2)
    assert attack_loss(logits.bfloat16(), y, "ce").dtype == torch.float32


def test_projections():
    x, _ = images()
    delta = torch.randn_like(x)
    for d in (project_linf(delta, x, 0.1), project_l2(delta, x, 0.5)):
        assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
    assert project_linf(delta, x, 0.1).abs().max() <= 0.1
    assert project_l2(delta, x, 0.5).flatten(1).norm(dim=1).max() <= 0.5 + TOL
    inner = 0.01 * torch.rand_like(x) * (0.5 - x).sign()  # points well inside both sets are kept
    torch.testing.assert_close(project_linf(inner, x, 0.1), inner)
    torch.testing.assert_close(project_l2(inner, x, 10.0), inner)
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        d = random_start(x, eps, norm, generator=torch.Generator().manual_seed(0))
        assert_feasible(x + d, x, eps, norm)


def test_robust_accuracy_matches_manual_count(trained):
    model, x, y = trained
    model.train()
    with torch.no_grad():
        manual = (model(x).argmax(1) == y).float().mean().item()
    assert robust_accuracy(model, x, y, None, batch_size=7) == pytest.approx(manual)
    assert model.training
    pgd_acc = robust_accuracy(model, x, y, functools.partial(pgd, eps=0.05), batch_size=100)
    assert 0 <= pgd_acc < manual


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -0.1}, "eps must be a finite number >= 0"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": 0.1, "steps": 0}, "steps must be an integer >= 1"),
        ({"eps": 0.1, "steps": 2.5}, "steps"),
        ({"eps": 0.1, "restarts": 0}, "restarts"),
        ({"eps": 0.1, "alpha": -1.0}, "alpha"),
        ({"eps": 0.1, "norm": "l1"}, "allowed: linf, l2"),
        ({"eps": 0.1, "loss": "xent"}, "allowed: ce, cw"),
        ({"eps": 0.1, "restarts": 2, "random_start": False}, "random_start"),
    ],
)
def test_invalid_arguments_raise_config_error(kwargs, match):
    x, y = images()
    with pytest.raises(ConfigError, match=match):
        pgd(tiny_cnn(), x, y, **kwargs)


def test_other_invalid_arguments():
    x, y = images()
    with pytest.raises(ConfigError, match="allowed: ce, cw"):
        attack_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "hinge")
    with pytest.raises(ConfigError, match="eps"):
        fgsm(tiny_cnn(), x, y, -1.0)
    with pytest.raises(ConfigError, match="allowed: linf, l2"):
        random_start(x, 0.1, "l0")
    with pytest.raises(ConfigError, match="batch_size"):
        robust_accuracy(tiny_cnn(), x, y, None, batch_size=0)
    with pytest.raises(ConfigError, match="labels"):
        robust_accuracy(tiny_cnn(), x, y[:2], None)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_linf_loop_matches_the_textbook_steps_bit_for_bit(loss):
    # the in-place L-inf loop must take exactly the steps of project_linf(delta + alpha * sign(grad))
    model = tiny_cnn().eval()
    x, y = images(12)
    x_adv = pgd(model, x, y, 0.1, steps=6, alpha=0.03, loss=loss, generator=torch.Generator().manual_seed(5))
    delta = random_start(x, 0.1, generator=torch.Generator().manual_seed(5))
    for _ in range(6):
        xa = (x + delta).requires_grad_(True)
        (grad,) = torch.autograd.grad(attack_loss(model(xa), y, loss).sum(), xa)
        delta = project_linf(delta + 0.03 * grad.sign(), x, 0.1)
    assert torch.equal(x_adv, (x + delta).clamp(0, 1))
    assert (x_adv - x).abs().max() <= 0.1 + TOL and x_adv.min() >= 0 and x_adv.max() <= 1
