"""The data containers (:class:`DatasetInfo`, :class:`Split`, :class:`Data`)
and seeded ways of cutting a :class:`Split` into parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the library needs to know about a data set.

    ``mean``/``std`` are per-channel statistics in [0, 1] units (the model
    normalises its input with them in its first layer). ``crop_pad`` and
    ``flip`` describe the training augmentation: random crop with that much
    zero padding (0 = none) and random horizontal flip. Horizontal flips are
    used for natural images (CIFAR-10/100, image folders) but not for digits
    (MNIST-like, SVHN), where a mirrored digit is a different symbol.
    ``eps`` is the default L-inf radius and ``alpha`` the PGD-AT step size.
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int
    flip: bool
    eps: float
    alpha: float
    classes: tuple[str, ...] = ()


@dataclass
class Split:
    """Images ``x`` (uint8, (N, C, H, W), contiguous) and labels ``y`` (int64, (N,))."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Split.x must be a uint8 (N, C, H, W) tensor, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != self.x.shape[:1]:
            raise ValueError(f"Split.y must be an int64 ({self.x.shape[0]},) tensor, got {self.y.dtype} {tuple(self.y.shape)}")
        self.x = self.x.contiguous()

    def __len__(self) -> int:
        return self.y.shape[0]

    def subset(self, idx: torch.Tensor | slice) -> Split:
        """The examples at ``idx`` (a LongTensor of indices or a slice), as a new Split."""
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.x.device)
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> Split:
        """This split on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    """A loaded data set: its info and its training and test splits (and a validation split given
    with the data, which the engine then uses instead of holding one out of ``train``)."""

    info: DatasetInfo
    train: Split
    test: Split
    val: Split | None = None


def _seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def split_validation(train: Split, n_val: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``n_val`` random training examples (seeded): returns ``(train_part, val_part)``.

    Both parts keep the original order of their examples. ``n_val=0`` gives
    ``(train, empty split)``.
    """
    if not 0 <= n_val < len(train):
        raise ConfigError(
            f"the validation split size must be between 0 and {len(train) - 1} "
            f"(the training set has {len(train)} examples), got {n_val}: choose a smaller validation size"
        )
    if n_val == 0:
        return train, train.subset(slice(0, 0))
    perm = _seeded_permutation(len(train), seed)
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)


def take_subset(split: Split, n: int | None, seed: int) -> Split:
    """``n`` random examples of ``split`` (seeded, original order kept); the whole split
    if ``n`` is None or at least its size."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise ConfigError(f"a subset size must be at least 1 (or unset for the whole split), got {n}")
    return split.subset(_seeded_permutation(len(split), seed)[:n].sort().values)
