"""Small shared pieces for the tests."""

from pathlib import Path

import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class TinyNet(nn.Module):
    """A small MLP classifier on [0,1] images, with an ``input_std`` like fastrobust models."""

    first_layer = "net.1"     # the layer that reads the (flattened) input first, as fastrobust's models declare

    def __init__(self, in_features=16, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, classes))
        self.register_buffer("input_std", torch.ones(1))

    def forward(self, x):
        return self.net(x)


def synthetic(n=64, classes=3, shape=(1, 4, 4), seed=0):
    """Separable synthetic images in [0,1]: the class sets the brightness of one quarter of the pixels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand((n, *shape), generator=g) * 0.3
    flat = x.view(n, -1)
    d = flat.shape[1]
    for c in range(classes):
        flat[y == c, c * d // classes:(c + 1) * d // classes] += 0.6
    return x.clamp(0, 1), y


class ForwardCounter:
    """Counts examples going through a model's forward (each counted forward ~ one pass here);
    with ``backward=True``, through its backward instead."""

    def __init__(self, model, backward: bool = False):
        self.examples = 0
        if backward:
            model.register_full_backward_hook(lambda module, grad_in, grad_out: self._count(grad_out[0]))
        else:
            model.register_forward_hook(lambda module, inputs, output: self._count(inputs[0]))

    def _count(self, t):
        self.examples += t.shape[0]


EPS = 0.1


def make_method(name, epochs=3, input_std=None, all_reduce_sum=None, lr=0.1, eps=EPS, alpha=EPS / 4, norm="linf",
                seed=0, label_smoothing=0.0, **params):
    """(model, method, step, calls) for method ``name`` on TinyNet; ``calls`` gets each step's input gradient."""
    from fastrobust.attacks import threat_model
    from fastrobust.methods import MethodContext, get_method

    torch.manual_seed(seed)
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
                        epochs=epochs, batches_per_epoch=2, threat=threat_model(norm), eps=eps, alpha=alpha,
                        label_smoothing=label_smoothing)
    if all_reduce_sum is not None:
        ctx.all_reduce_sum = all_reduce_sum
    cls = get_method(name)
    method = cls(ctx, **cls.resolve_params(params))
    method.opt = opt
    return model, method, step, calls


def rows(n, b=0):
    """The training-split rows (Batch.index) of minibatch ``b`` of ``n`` examples: n*b .. n*b + n - 1."""
    return torch.arange(n * b, n * b + n)


def run_epochs(model, method, step, epochs, n=24, batches=2, eps=EPS, alpha=EPS / 4, first=0):
    """Train ``epochs`` epochs of ``batches`` synthetic minibatches (minibatch b: examples ``rows(n, b)``);
    returns (state() per epoch, passes per epoch / n)."""
    from fastrobust.methods import Batch

    states, passes = [], []
    for epoch in range(first, first + epochs):
        total = 0.0
        for b in range(batches):
            x, y = synthetic(n, seed=b)
            total += method.train_batch(model, Batch(x, y, eps, alpha, rows(n, b)), step).passes
        method.on_epoch_end(epoch)
        states.append(method.state())
        passes.append(total / (n * batches))
    return states, passes


def record_inputs(model):
    """A list that receives a copy of every input forwarded through ``model``."""
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    return seen


def assert_feasible(inputs, x, eps=EPS):
    """Every forwarded input is x + delta with |delta| <= eps and pixels in [0, 1]."""
    for inp in inputs:
        assert (inp - x).abs().max() <= eps + 1e-6 and inp.min() >= 0 and inp.max() <= 1
