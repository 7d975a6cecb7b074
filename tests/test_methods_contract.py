"""The contract every registered method keeps with the engine, checked for each one (as timm tests every
registered model): a method added later is covered here without editing this file."""

import copy
import warnings

import pytest
import torch

from fastrobust.methods import Batch, list_methods
from helpers import EPS, ForwardCounter, make_method, rows, synthetic

METHODS = [cls.name for cls in list_methods()]
# small attacks, so that every method runs quickly (a method uses those of its parameters it has)
SMALL = {"steps": 3, "k_min": 1, "k_max": 3, "replays": 2, "r_max": 3, "d": 1, "gamma": 0.5, "p": 0.0,
         # LIET: its per-class perturbation refreshed at every minibatch (each costs the same), and label smoothing
         # that leaves the true class a target above the others' on 3 classes (0.6 leaves it 0.4 against 0.3)
         "refresh": 1, "smoothing": 0.1}


def small(name):
    names = {p.name for p in make_method(name)[1].params}
    return {k: v for k, v in SMALL.items() if k in names}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reported_passes_equal_the_work_counted(name, norm):
    """Passes reported = forwards x 1/3 + backwards x 2/3, counted on the model, batch by batch over
    3 epochs (so that growing methods are checked at several levels)."""
    model, method, step, _ = make_method(name, norm=norm, **small(name))
    fwd, bwd = ForwardCounter(model), ForwardCounter(model, backward=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # full backward hooks on inputs that need no gradient
        for epoch in range(3):
            for b in range(2):
                before = fwd.examples / 3 + 2 * bwd.examples / 3
                x, y = synthetic(24, seed=b)
                out = method.train_batch(model, Batch(x, y, EPS, EPS / 4, rows(24, b)), step)
                assert out.passes == pytest.approx(fwd.examples / 3 + 2 * bwd.examples / 3 - before), (epoch, b)
                assert out.logits.shape == (24, 3) and out.loss.ndim == 0 and not out.loss.requires_grad
            method.on_epoch_end(epoch)


@pytest.mark.parametrize("name", METHODS)
def test_label_smoothing_reaches_every_method(name):
    """--label-smoothing changes the weight step of every method (none ignores it), and 0 is no smoothing."""
    def weights_after(smoothing):
        model, method, step, _ = make_method(name, label_smoothing=smoothing, **small(name))
        x, y = synthetic(24)
        torch.manual_seed(5)
        method.train_batch(model, Batch(x, y, EPS, EPS / 4, rows(24)), step)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = weights_after(0.0)
    assert torch.equal(plain, weights_after(0.0))
    assert not torch.allclose(plain, weights_after(0.3), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_loss_decreases_on_a_small_batch(name):
    model, method, step, _ = make_method(name, **small(name))
    x, y = synthetic(96)
    losses = []
    for epoch in range(6):
        losses += [method.train_batch(model, Batch(x, y, 0.05, 0.0125, rows(96)), step).loss.item() for _ in range(5)]
        method.on_epoch_end(epoch)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_resumes_exactly(name):
    """Stop after 2 epochs, rebuild the method from its state_dict (with the same weights, optimizer and RNG):
    the next 2 epochs give the same losses, logged states and weights, bit for bit."""
    model, method, step, _ = make_method(name, **small(name))
    from helpers import run_epochs

    run_epochs(model, method, step, 2)
    saved = copy.deepcopy({"method": method.state_dict(), "model": model.state_dict(),
                           "opt": method.opt.state_dict(), "rng": torch.get_rng_state()})
    go_on = run_epochs(model, method, step, 2, first=2)
    weights = copy.deepcopy(model.state_dict())

    model2, fresh, step2, _ = make_method(name, seed=1, **small(name))
    model2.load_state_dict(saved["model"])
    fresh.opt.load_state_dict(saved["opt"])
    fresh.load_state_dict(copy.deepcopy(saved["method"]))
    torch.set_rng_state(saved["rng"])
    assert run_epochs(model2, fresh, step2, 2, first=2) == go_on
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())


@pytest.mark.parametrize("name", METHODS)
def test_help_lists_the_methods_own_parameters(name, capsys, monkeypatch):
    """`fastrobust train --method NAME --help` shows each of the method's parameters with its own default,
    and no parameter that only other methods have (the command line's parser, run in this process; the
    entry point itself is tests/test_cli.py's)."""
    from fastrobust.cli import main

    cls = make_method(name)[1]
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as done:
        main(["train", "--method", name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    section = out.split(f"parameters of method {name}", 1)[1].split("examples:", 1)[0]
    entries, flag = {}, None      # option lines start with "  --flag"; their help continues on indented lines
    for line in section.splitlines():
        if line.startswith("  --"):
            flag = line.split()[0]
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line
    entries = {f: " ".join(t.split()) for f, t in entries.items()}
    assert set(entries) == {p.flag for p in cls.params}     # its own parameters, and no other method's
    for p in cls.params:
        default = str(p.default).lower() if p.type is bool else str(p.default)
        assert " ".join(p.help.split())[:40] in entries[p.flag]
        assert f"(default {default}" in entries[p.flag] or (default == "" and "(default" not in entries[p.flag])


@pytest.mark.parametrize("name", METHODS)
def test_strengthen_adds_work_and_keeps_the_accounting(name):
    """The engine's collapse guard calls strengthen(): a method that has an attack spends more passes after
    it (reported = counted), and the boost survives state_dict; one without (natural) says so with None."""
    model, method, step, _ = make_method(name, **small(name))
    x, y = synthetic(24)
    method.on_epoch_end(0)              # growing methods: past their first level
    before = method.train_batch(model, Batch(x, y, EPS, EPS / 4, rows(24)), step).passes
    change = method.strengthen()
    fwd, bwd = ForwardCounter(model), ForwardCounter(model, backward=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        after = method.train_batch(model, Batch(x, y, EPS, EPS / 4, rows(24)), step).passes
    assert after == pytest.approx(fwd.examples / 3 + 2 * bwd.examples / 3)
    if change is None:
        assert after == before
    else:
        assert isinstance(change, str) and (after > before or name in ("fat", "f-trades", "f-mart", "gaat", "mgaat"))
        fresh = make_method(name, **small(name))[1]
        fresh.load_state_dict(copy.deepcopy(method.state_dict()))
        assert fresh.boost == method.boost == 1 and fresh.state().get("guard_boost") == 1
