"""Small shared pieces for the tests."""

from pathlib import Path

import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class TinyNet(nn.Module):
    """A small MLP classifier on [0,1] images, with an ``input_std`` like fastrobust models."""

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
