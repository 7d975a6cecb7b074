import pytest
import torch

from fastrobust.methods import Batch, MethodContext, get_method, list_methods
from helpers import ForwardCounter, TinyNet, synthetic

EPS = 0.1


def _setup(name, **params):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = []

    def step(loss, wrt=None):
        calls.append(1)
        opt.zero_grad()
        if wrt is not None:
            wrt.grad = None
        loss.backward()
        opt.step()
        return None if wrt is None else wrt.grad.detach()

    cls = get_method(name)
    ctx = MethodContext(num_classes=3, input_std=torch.ones(1), epochs=1, batches_per_epoch=1)
    method = cls(ctx, **cls.resolve_params(params))
    return model, method, step, calls


@pytest.mark.parametrize("name,params,per_example,steps", [
    ("natural", {}, 1, 1),
    ("fgsm-rs", {}, 2, 1),
    ("pgd", {"steps": 5}, 6, 1),
    ("free", {"replays": 3}, 3, 3),
])
def test_reported_passes_match_work_done(name, params, per_example, steps):
    model, method, step, calls = _setup(name, **params)
    counter = ForwardCounter(model)
    x, y = synthetic(32)
    out = method.train_batch(model.train(), Batch(x, y, EPS, EPS / 2), step)
    assert out.passes == pytest.approx(per_example * 32)
    assert counter.examples == per_example * 32         # every pass here is a forward+backward
    assert len(calls) == steps                           # optimizer steps: one, or one per replay
    assert out.logits.shape == (32, 3) and out.loss.ndim == 0


@pytest.mark.parametrize("name", ["natural", "fgsm-rs", "pgd", "free"])
def test_training_loss_decreases(name):
    model, method, step, _ = _setup(name)
    x, y = synthetic(96)
    losses = []
    for _ in range(30):
        out = method.train_batch(model.train(), Batch(x, y, 0.05, 0.05 if name != "fgsm-rs" else 0.0625), step)
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_free_delta_is_carried_and_stays_in_ball():
    model, method, step, _ = _setup("free", replays=2)
    x, y = synthetic(32)
    method.train_batch(model.train(), Batch(x, y, EPS, EPS), step)
    d1 = method.delta.clone()
    assert d1.abs().max() <= EPS + 1e-6 and d1.abs().max() > 0
    assert ((x + d1) >= -1e-6).all() and ((x + d1) <= 1 + 1e-6).all()
    x2, y2 = synthetic(20, seed=1)                     # a smaller (last) batch reuses the first rows
    method.train_batch(model.train(), Batch(x2, y2, EPS, EPS), step)
    assert method.delta.shape[0] == 32 and torch.equal(method.delta[20:], d1[20:])
    state = method.state_dict()
    fresh = _setup("free", replays=2)[1]
    fresh.load_state_dict(state)
    assert torch.equal(fresh.delta, method.delta)


def test_every_method_is_described():
    for cls in list_methods():
        assert cls.description and cls.name
        for p in cls.params:
            assert p.help and p.flag.startswith("--")
