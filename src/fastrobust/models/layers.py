"""Building blocks shared by every model: input normalisation and the wrapper
that turns a bare network (which expects normalised input) into a classifier
of ``[0, 1]`` pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastrobust.errors import ConfigError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for NCHW input.

    ``mean`` and ``std`` are buffers, so they follow ``.to()`` and are saved in
    the ``state_dict``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std):
            raise ConfigError(f"mean and std need one value per channel; got {len(mean)} and {len(std)}")
        if not all(s > 0 for s in std):
            raise ConfigError(f"std must be > 0 for every channel, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Classifier(nn.Module):
    """``net(normalize(x))``: a classifier of images with pixels in ``[0, 1]``.

    Attacks work in pixel space (``eps`` is a pixel budget); the normalisation
    is part of the model, so gradients flow through it.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        declared = getattr(net, "first_layer", None)    # the net's first layer, named from here (see ResNet)
        if isinstance(declared, str):
            self.first_layer = f"net.{declared}" if declared else "net"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def input_std(self) -> torch.Tensor:
        """The per-channel std, shape ``(C,)``: ``d loss / d x = (d loss / d x_norm) / std``."""
        return self.normalize.std.flatten()


def kaiming_init(model: nn.Module) -> None:
    """He-normal (fan-out, ReLU) convolutions, unit/zero batch norm, zero linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
