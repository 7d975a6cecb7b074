"""ResNets with the CIFAR stem (3x3 stride-1 conv, no max pool) and adaptive
average pooling, so they accept any input size (28x28, 32x32, 64x64, ...).

One :class:`ResNet` skeleton serves the post-activation ResNet-18, the
pre-activation PreActResNet-18 (He et al. 2016, as in Wong et al. 2020 and
Rice et al. 2020) and the WideResNet (whose block is the pre-activation block
plus dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fastrobust.models.layers import kaiming_init
from fastrobust.models.registry import int_option, register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    preact = False

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block ``conv(drop(relu(bn(conv(relu(bn(x))))))) + shortcut``.

    A projection shortcut, when needed, takes the pre-activated input.
    """

    preact = True

    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + shortcut


class ResNet(nn.Module):
    """Stem, stages of ``depths[i]`` blocks with ``widths[i]`` channels (the
    first stage at stride 1, the others halving the resolution), global average
    pooling and a linear head. Extra keyword arguments go to every block."""

    #: the submodule that reads the input first (methods such as YOPO train with the gradient at its output)
    first_layer = "stem.0"

    def __init__(
        self,
        block: type[BasicBlock] | type[PreActBlock],
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int,
        stem_width: int,
        **block_options,
    ):
        super().__init__()
        stem: list[nn.Module] = [_conv3x3(in_channels, stem_width)]
        if not block.preact:
            stem += [nn.BatchNorm2d(stem_width), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        blocks, cin = [], stem_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            for j in range(depth):
                blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1, **block_options))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU()) if block.preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final(self.blocks(self.stem(x)))
        return self.fc(self.pool(out).flatten(1))


@register_model("preact-resnet18", "PreActResNet-18 (CIFAR stem); width = channels of the first stage")
def preact_resnet18(num_classes: int, in_channels: int, image_size: tuple[int, int], *, width: int = 64) -> nn.Module:
    width = int_option("width", width)
    return ResNet(PreActBlock, [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], num_classes, in_channels, width)


@register_model("resnet18", "ResNet-18 (CIFAR stem: 3x3 conv, no max pool); width = channels of the first stage")
def resnet18(num_classes: int, in_channels: int, image_size: tuple[int, int], *, width: int = 64) -> nn.Module:
    width = int_option("width", width)
    return ResNet(BasicBlock, [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], num_classes, in_channels, width)
