"""The one attack step loop (fastrobust.attacks.kernel.ascend): its plain loop is PGD's, its masked early stop
takes the same steps and charges the same passes as forwarding the running examples only."""

import pytest
import torch
from torch.nn import functional as F

from fastrobust.attacks import threat_model
from fastrobust.attacks.kernel import EarlyStop, ascend
from helpers import EPS, TinyNet, synthetic


def test_plain_loop_is_a_hand_written_pgd_bit_for_bit():
    torch.manual_seed(0)
    model, (x, y) = TinyNet(), synthetic(32)
    start = (torch.rand_like(x) * 2 - 1) * EPS
    kept = start.clone()
    delta, grad, passes = ascend(model, x, start, 5, EPS / 4, EPS, threat_model("linf"), y, keep_grad=True)
    d = start.clone()
    for _ in range(5):
        d.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x + d), y, reduction="sum"), d)
        d = torch.min(torch.max((d.detach() + EPS / 4 * g.sign()).clamp(-EPS, EPS), -x), 1 - x)
    assert torch.equal(delta, d) and torch.equal(grad, g) and passes == 5 * 32
    assert torch.equal(start, kept)                        # the start is not modified in place


@pytest.mark.parametrize("tau", [0, 2])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_masked_early_stop_equals_forwarding_the_running_examples(tau, norm):
    torch.manual_seed(0)
    model, (x, y) = TinyNet().eval(), synthetic(48)
    start = threat_model(norm).random_delta(x, EPS)
    runs = {}
    for compact in (False, True):
        stop = EarlyStop(y, tau)
        runs[compact] = (*ascend(model, x, start, 10, EPS / 2, EPS, threat_model(norm), y, stop=stop,
                                 compact=compact), stop.taken.clone())
    (masked, _, charged, taken), (sub, _, spent, taken_sub) = runs[False], runs[True]
    assert torch.allclose(masked, sub, atol=1e-6) and torch.equal(taken, taken_sub)
    assert isinstance(charged, torch.Tensor) and charged.dtype == torch.float64 and charged == spent
    assert 0 < taken.sum() < 10 * 48                       # some examples stopped, some steps were taken
    assert charged == taken.sum() + (taken < 10).sum()     # each step taken, plus the one that stopped an example


def test_a_stopped_example_keeps_its_iterate():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = synthetic(8)
    with torch.no_grad():
        y = model(x).argmax(1)                              # all correct at x
        y[:4] = (y[:4] + 1) % 3                             # the first four misclassified from the start
    stop = EarlyStop(y)
    delta, _, charged = ascend(model, x, torch.zeros_like(x), 3, EPS, EPS, threat_model("linf"), y, stop=stop)
    assert (delta[:4] == 0).all() and (delta[4:] != 0).any() and (stop.taken[:4] == 0).all()
    assert charged == 4 + stop.taken[4:].sum() + (stop.taken[4:] < 3).sum()


def test_training_attacks_compact_on_the_cpu_in_eval_mode_only(monkeypatch):
    """FAT on the CPU forwards only its running examples in eval mode (the same steps as the masked batch an
    accelerator runs, at fewer forwards); in train mode it masks (BatchNorm's statistics see the whole batch)."""
    from fastrobust.attacks import kernel
    from fastrobust.methods import Batch
    from helpers import ForwardCounter, make_method

    x, y = synthetic(48)
    results = {}
    for compact_on_cpu in (True, False):
        monkeypatch.setattr(kernel, "COMPACT_ON_CPU", compact_on_cpu)
        torch.manual_seed(0)
        model, method, _, _ = make_method("fat", steps=10, tau=1)
        counter = ForwardCounter(model)
        torch.manual_seed(1)
        x_adv, passes, _ = method.attack_(model, Batch(x, y, EPS, EPS / 4), 10, EPS / 4)
        results[compact_on_cpu] = x_adv, float(passes), counter.examples
    (sub, spent, forwarded), (masked, charged, forwarded_all) = results[True], results[False]
    assert torch.allclose(sub, masked, atol=1e-6) and spent == charged == forwarded < forwarded_all == 10 * 48
    monkeypatch.setattr(kernel, "COMPACT_ON_CPU", True)
    assert not kernel.compacts(TinyNet().train(), x) and kernel.compacts(TinyNet().eval(), x)
