"""Small convolutional networks used for MNIST-scale adversarial training."""

from __future__ import annotations

from torch import nn

from fastrobust.errors import ConfigError
from fastrobust.models.layers import kaiming_init
from fastrobust.models.registry import rate_option, register_model


def _flat_size(name: str, image_size: tuple[int, int], shrink, channels: int, minimum: int) -> int:
    """Flattened feature size after the conv trunk; ``shrink`` maps a side length to its final size."""
    h, w = (shrink(s) for s in image_size)
    if h < 1 or w < 1:
        raise ConfigError(f"{name} needs images of at least {minimum}x{minimum}, got {image_size[0]}x{image_size[1]}")
    return channels * h * w


@register_model("mnist-cnn", "Fast-AT MNIST CNN (Wong et al. 2020): two stride-2 convs, two linear layers")
def mnist_cnn(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    flat = _flat_size("mnist-cnn", image_size, lambda s: s // 4, 32, 4)
    net = nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )
    net.first_layer = "0"     # the submodule that reads the input first (see ResNet.first_layer)
    return net


@register_model("smallcnn", "TRADES/FAT SmallCNN: four 3x3 convs, two max pools, three linear layers")
def smallcnn(num_classes: int, in_channels: int, image_size: tuple[int, int], *, drop: float = 0.5) -> nn.Module:
    drop = rate_option("drop", drop)
    flat = _flat_size("smallcnn", image_size, lambda s: ((s - 4) // 2 - 4) // 2, 64, 16)

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3), nn.ReLU()]

    net = nn.Sequential(
        *conv(in_channels, 32), *conv(32, 32), nn.MaxPool2d(2),
        *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 200), nn.ReLU(), nn.Dropout(drop),
        nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, num_classes),
    )
    kaiming_init(net)
    net.first_layer = "0"
    return net
