"""The data containers (:class:`DatasetInfo`, :class:`Split`, :class:`Data`)
and seeded ways of cutting a :class:`Split` into parts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, DataError


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
    #: what the conversion learnt about the data (``classes``: names from the source, e.g. a Hugging Face
    #: ClassLabel; ``notes``: warnings for the run's log and summary); not carried by :meth:`subset`
    meta: dict = field(default_factory=dict, repr=False, compare=False)

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
    #: warnings about the data (e.g. images a DataLoader would have dropped), for the run's log and summary.json
    notes: list = field(default_factory=list)


def split_meta(split) -> dict:
    """The ``meta`` of a :class:`Split` (or of a LazySplit given one), else an empty dict."""
    return getattr(split, "meta", None) or {}


def check_classes(split, what: str, fix: str) -> None:
    """Refuse a non-empty split whose labels hold fewer than 2 classes: nothing can be learnt from it and
    its accuracy means nothing (every prediction of the one class is right)."""
    if len(split) == 0:
        return
    present = torch.unique(split.y)
    if len(present) < 2:
        raise DataError(f"{what} holds only class {int(present[0])} ({len(split)} images): a classifier needs "
                        f"at least 2 classes, and an accuracy on one class means nothing; {fix}")


def _seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def chance_accuracy(y: torch.Tensor, num_classes: int) -> float:
    """The accuracy of a model that learnt nothing on labels ``y``: the larger of 1/num_classes and the most
    frequent class's share (always predicting it)."""
    share = float(torch.bincount(y.long().cpu()).max()) / len(y) if len(y) else 0.0
    return max(1 / num_classes, share)


def learning_verdict(acc: float | None, y: torch.Tensor, num_classes: int, what: str) -> str | None:
    """Why a model whose accuracy on labels ``y`` is ``acc`` learnt nothing (``what``: e.g. "clean test
    accuracy"), or None when it learnt something or cannot be judged (no accuracy, no examples).

    At chance level = within 2 points (or two standard errors of a chance-level accuracy on ``len(y)``
    examples, if more) of :func:`chance_accuracy`."""
    if acc is None or len(y) == 0:
        return None
    chance = chance_accuracy(y, num_classes)
    margin = max(0.02, 2 * math.sqrt(chance * (1 - chance) / len(y)))
    if acc > chance + margin:
        return None
    base = f"1 in {num_classes}" if chance == 1 / num_classes else "the share of the most frequent class"
    return f"{what} {100 * acc:.2f}% is at chance level ({100 * chance:.2f}%, {base})"


#: above this share of the training data, the held-out validation split is said (warned) to take too much
VAL_SHARE_WARNING = 0.2


def validation_share_note(n_train: int, n_val: int) -> str | None:
    """A warning when the validation split held out of ``n_train`` training examples takes more than a fifth."""
    if n_train <= 0 or n_val <= VAL_SHARE_WARNING * n_train:
        return None
    lower = max(1, int(VAL_SHARE_WARNING * n_train) // 2)
    return (f"the validation split takes {n_val} of the {n_train} training examples ({100 * n_val / n_train:.0f}%), "
            f"which are then not trained on: lower val_size (--val-size, e.g. {lower}) or give a validation "
            f"split (fit(val_data=...))")


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
