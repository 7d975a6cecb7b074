"""The FastAT Benchmark's leaders (methods/leaders.py): each rule checked on a small model, beyond the contract."""

import warnings

import pytest
import torch
from torch.nn import functional as F

from fastrobust.methods import Batch
from helpers import EPS, ForwardCounter, make_method, run_epochs, synthetic


def test_gradalign_regulariser_is_one_minus_the_mean_cosine_and_reaches_the_weights():
    from fastrobust.methods.leaders import _cosine

    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [3.0, 1.0]])
    assert _cosine(a, b).item() == pytest.approx(0.5)     # (1 + 0) / 2: the zero gradient is left out
    assert _cosine(torch.zeros(2, 3), torch.ones(2, 3)).item() == 1.0   # none left: no regularisation
    x, y = synthetic(24)
    grads = {}
    for lam in (0.0, 0.2):   # the same random draws: the weight step differs only by the regulariser
        model, method, _, _ = make_method("gradalign", lam=lam)
        torch.manual_seed(5)
        method.train_batch(model, Batch(x, y, EPS, EPS), lambda loss, wrt=None: loss.backward())
        grads[lam] = [p.grad.clone() for p in model.parameters()]
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(grads[0.0], grads[0.2]))


def test_gradalign_trains_on_fgsm_from_x():
    model, method, step, _ = make_method("gradalign", lam=0.0)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x, y = synthetic(24)
    x_req = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)[0]
    seen.clear()
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    assert torch.allclose(seen[0], x) and torch.allclose(seen[1], expected)
