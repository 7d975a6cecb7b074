"""ResNet-50 for ImageNet-sized input (He et al. 2016), written for fastrobust.

The ImageNet stem (7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max
pool), four stages of 3, 4, 6 and 3 bottleneck blocks (1x1 reduce, 3x3, 1x1
expand by 4; the stride of a stage's first block sits on its 3x3 convolution,
the layout most ImageNet adversarial-training code uses, including the Free-AT
and DEAT reference code), global average pooling and a linear head. At the
default width (64) and 1000 classes it has 25,557,032 parameters.

Like every fastrobust model it is wrapped by :class:`~fastrobust.models.Classifier`,
whose first layer normalises the ``[0, 1]`` input with the data set's mean and std.
The stem and the stages halve the resolution five times (224x224 reaches the pool
at 7x7); adaptive pooling makes it accept any input size, so tests run it on small images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fastrobust.models.layers import kaiming_init
from fastrobust.models.registry import int_option, register_model


class Bottleneck(nn.Module):
    """``relu(bn(conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(x)))))))) + shortcut(x))``, ``width * 4`` channels out."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """ImageNet stem, stages of ``depths[i]`` bottleneck blocks of ``widths[i]`` (x4 out) channels, pool, linear."""

    #: the submodule that reads the input first (methods such as YOPO train with the gradient at its output)
    first_layer = "stem.0"

    def __init__(self, depths: Sequence[int], widths: Sequence[int], num_classes: int, in_channels: int,
                 stem_width: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem_width),
            nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        blocks, cin = [], stem_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            for j in range(depth):
                blocks.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


@register_model("resnet50", "ResNet-50 (ImageNet stem: 7x7 stride-2 conv and max pool; bottleneck blocks), "
                            "for 224x224 ImageNet input; width = channels of the first stage's 3x3 convs")
def resnet50(num_classes: int, in_channels: int, image_size: tuple[int, int], *, width: int = 64) -> nn.Module:
    width = int_option("width", width)
    return BottleneckResNet([3, 4, 6, 3], [width, 2 * width, 4 * width, 8 * width], num_classes, in_channels, width)
