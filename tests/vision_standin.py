"""Stand-ins for torchvision's and timm's model builders, built the way they build theirs (their real
wheels do not load beside the CPU torch of these machines): a factory taking keyword arguments that
returns a class whose constructor needs positional arguments (``block``, ``layers``)."""

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return (x + self.bn(self.conv(x))).relu()


class ResNet(nn.Module):
    """Like torchvision.models.ResNet: ``ResNet(block, layers, num_classes=1000, ...)``."""

    def __init__(self, block, layers, num_classes=1000, width=8, in_chans=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layers = nn.Sequential(*(block(width) for _ in range(sum(layers))))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.bn1(self.conv1(x)).relu()).mean((2, 3)))


def resnet18(*, weights=None, progress=True, **kwargs):
    """Like torchvision.models.resnet18: keyword-only arguments passed on to :class:`ResNet`."""
    if weights is not None:
        raise ValueError("no pretrained weights in the stand-in")
    return ResNet(BasicBlock, [1, 1], **kwargs)


def create_model(model_name, pretrained=False, **kwargs):
    """Like timm.create_model: a model by name, ``num_classes`` and ``in_chans`` among the kwargs."""
    if model_name != "resnet18":
        raise RuntimeError(f"Unknown model ({model_name})")
    return resnet18(**kwargs)


def rgb_data(data_dir=None):
    """(train, test) of 3 x 8 x 8 images in 3 classes: a ``--dataset`` for the models above."""
    from user_data import Pairs, separable

    return Pairs(*separable(160, 3, 0, (3, 8, 8))), Pairs(*separable(60, 3, 1, (3, 8, 8)))
