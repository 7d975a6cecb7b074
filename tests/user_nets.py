"""Models defined outside fastrobust, reached through ``--model user_nets:...`` in the tests."""

import torch
from torch import nn


def make_net(num_classes, in_channels, image_size, hidden=32):
    """A small MLP: the factory gets the data's shape from fastrobust and ``hidden`` from --model-opt."""
    h, w = image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def wrong_output(hidden=8):
    """Returns 7 outputs whatever the data: refused before training."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(7))


def not_a_module():
    return "a string"


class ConvNet(nn.Module):
    """A class with required arguments: rebuilt from its recorded options."""

    def __init__(self, channels, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))
