"""WideResNet (Zagoruyko & Komodakis 2016) as used for CIFAR by Madry et al. and TRADES."""

from __future__ import annotations

from torch import nn

from fastrobust.errors import ConfigError
from fastrobust.models.registry import int_option, rate_option, register_model
from fastrobust.models.resnet import PreActBlock, ResNet


@register_model("wrn-34-10", "WideResNet (Madry/TRADES CIFAR WRN-34-10); depth = 6n+4, widen = width factor")
def wide_resnet(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *,
    depth: int = 34, widen: int = 10, drop: float = 0.0,
) -> nn.Module:
    depth, widen, drop = int_option("depth", depth), int_option("widen", widen), rate_option("drop", drop)
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
    n = (depth - 4) // 6
    return ResNet(PreActBlock, [n] * 3, [16 * widen, 32 * widen, 64 * widen], num_classes, in_channels, 16, drop=drop)
