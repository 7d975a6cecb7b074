"""VGG-16 with batch norm, CIFAR-style: global average pooling and one linear layer."""

from __future__ import annotations

import torch
from torch import nn

from fastrobust.models.layers import kaiming_init
from fastrobust.models.registry import int_option, register_model

# Channel multipliers of the VGG-16 convolutions ("M": 2x2 max pool).
_VGG16 = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]


class VGG(nn.Module):
    """Conv-BN-ReLU stages separated by max pools, then average pooling and a linear head.

    Pools use ``ceil_mode`` so that small inputs (e.g. 28x28) never shrink to zero.
    """

    #: the submodule that reads the input first (methods such as YOPO train with the gradient at its output)
    first_layer = "features.0"

    def __init__(self, cfg: list, width: int, num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                cout = item * width
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("vgg16", "VGG-16 with batch norm (CIFAR-style head); width = channels of the first stage")
def vgg16(num_classes: int, in_channels: int, image_size: tuple[int, int], *, width: int = 64) -> nn.Module:
    return VGG(_VGG16, int_option("width", width), num_classes, in_channels)
