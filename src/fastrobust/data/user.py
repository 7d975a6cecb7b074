"""A user's own data: ``--dataset package.module:factory`` and the data given to ``fastrobust.fit``.

Whatever form the data comes in (a torch ``Dataset`` of ``(image, label)`` pairs
with tensor, numpy or PIL images, a ``DataLoader`` of batches, or a pair of
tensors ``(x, y)``), it is read once, checked, and converted into the
in-memory :class:`Split` (uint8 pixels) that the built-in data sets use, so the
training loop, the validation split and evaluation stay the same.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import fields

import numpy as np
import torch

from ..errors import DataError
from ..factories import call_factory
from .core import Data, DatasetInfo, Split
from .imagefolder import _channel_stats
from .stream import LazySplit, lazy

#: what ``fastrobust datasets`` and the docs say about ``--dataset package.module:factory``
FACTORY_HELP = """\
Your own data: --dataset package.module:factory
  factory is an importable callable returning (train, test): two torch Datasets of (image, label)
  pairs (an image is a (C, H, W) or (H, W) tensor of floats in [0, 1] or of uint8, a numpy array
  (H, W[, C]) or a PIL image; a label an integer in [0, classes)), or two (x, y) tensor pairs.
  It gets data_dir=--data-dir if it declares that parameter. It may return a third element, a dict
  of facts about the data: num_classes, classes (names), eps, alpha, crop_pad, flip (training
  augmentation: random crop with that padding and horizontal flips; default none).
  The data is read once and held in memory as 8-bit pixels, like the built-in data sets; its
  shapes and labels are checked before training. The held-out validation split is taken from
  train (--val-size). Example: fastrobust train --dataset mypkg.data:make_data --model mypkg.nets:make_net"""

_INFO_KEYS = {"num_classes", "classes", "eps", "alpha", "crop_pad", "flip"}
MEMORY_FRACTION = 0.8   # of the available memory that the converted data may take


def load_factory(ref: str, data_dir: str | None = None, stream: bool = False) -> Data:
    """Call the user's data factory ``ref`` and convert its (train, test[, facts]) into :class:`Data`
    (with ``stream``, splits read item by item when needed: :func:`to_lazy_split`)."""
    result = call_factory(ref, "--dataset", {}, {"data_dir": data_dir})
    if isinstance(result, Data):   # already converted (fastrobust.fit)
        return result
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise DataError(f"--dataset {ref!r} returned a {type(result).__name__}; it must return (train, test) "
                        f"or (train, test, facts): two Datasets of (image, label) pairs, and a dict")
    facts = result[2] if len(result) == 3 else {}
    if not isinstance(facts, Mapping) or set(facts) - _INFO_KEYS:
        raise DataError(f"--dataset {ref!r}: the third element must be a dict with keys among "
                        f"{', '.join(sorted(_INFO_KEYS))}; got {facts!r}")
    convert = to_lazy_split if stream else to_split
    train = convert(result[0], f"--dataset {ref!r} train")
    test = convert(result[1], f"--dataset {ref!r} test")
    return make_data(ref, train, test, **facts)


def make_data(name: str, train: Split, test: Split | None = None, val: Split | None = None, *,
              num_classes: int | None = None, classes=(), eps: float = 8 / 255, alpha: float = 2 / 255,
              crop_pad: int = 0, flip: bool = False) -> Data:
    """:class:`Data` from converted splits: shapes agree, labels lie in [0, num_classes).

    ``num_classes`` defaults to ``len(classes)``, else to the largest label + 1. A missing test
    split is an empty one (the run then reports no test accuracy).
    """
    if len(train) == 0:
        raise DataError(f"{name}: the training data is empty")
    test = test if test is not None else train.subset(slice(0, 0))
    parts = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    shape = tuple(train.x.shape[1:])
    for part, split in parts.items():
        if len(split) and tuple(split.x.shape[1:]) != shape:
            raise DataError(f"{name}: {part} images are {tuple(split.x.shape[1:])} (C, H, W) but training images are "
                            f"{shape}; every image must have the same shape")
    if num_classes is None:
        num_classes = len(classes) if classes else 1 + max(int(s.y.max()) for s in parts.values() if len(s))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise DataError(f"{name}: num_classes must be an integer >= 2, got {num_classes!r}")
    if classes and len(classes) != num_classes:
        raise DataError(f"{name}: {len(classes)} class names for {num_classes} classes")
    for part, split in parts.items():
        if len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= num_classes):
            bad = split.y[(split.y < 0) | (split.y >= num_classes)][0].item()
            raise DataError(f"{name}: {part} label {bad} is outside [0, {num_classes}); labels must be class indices "
                            f"0..{num_classes - 1}")
    # the channel statistics: of every training image, or of an evenly spaced sample of a streamed split
    mean, std = _channel_stats((train.sample() if isinstance(train, LazySplit) else train.x).numpy())
    std = tuple(max(s, 1 / 255) for s in std)   # a constant channel: no division by zero
    info = DatasetInfo(name=name, num_classes=num_classes, channels=shape[0], image_size=shape[1:], mean=mean,
                       std=std, crop_pad=int(crop_pad), flip=bool(flip), eps=float(eps), alpha=float(alpha),
                       classes=tuple(str(c) for c in classes))
    return Data(info, train, test, val)


def to_split(data, what: str) -> Split:
    """``data`` (a Split, an (x, y) pair of tensors, a DataLoader or a Dataset) as an in-memory uint8 Split."""
    if isinstance(data, Split):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        return _from_batches([(torch.as_tensor(data[0]), torch.as_tensor(data[1]))], what)
    if isinstance(data, torch.utils.data.DataLoader):
        return _from_batches(data, what)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _from_dataset(data, what)
    raise DataError(f"{what}: expected a torch Dataset of (image, label) pairs, a DataLoader or a pair of tensors "
                    f"(x, y); got a {type(data).__name__}")


def _pair(item, what: str, index) -> tuple:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{what}: item {index} is a {type(item).__name__}; each item must be an (image, label) pair")
    return item[0], item[1]


def _image(img, what: str, index) -> torch.Tensor:
    """One image as a (C, H, W) tensor (uint8 or float), from a tensor, a numpy array or a PIL image."""
    if hasattr(img, "mode") and hasattr(img, "size") and not isinstance(img, (torch.Tensor, np.ndarray)):   # PIL
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            raise DataError(f"{what}: image {index} is a PIL image of mode {img.mode}; convert it to 'L' or 'RGB'")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr.copy())[None]
    if isinstance(img, np.ndarray):   # numpy images are (H, W) or (H, W, C), as PIL gives them
        t = torch.from_numpy(np.ascontiguousarray(img))
        return t.permute(2, 0, 1) if t.dim() == 3 else t[None] if t.dim() == 2 else _bad_shape(t, what, index)
    if isinstance(img, torch.Tensor):
        return img if img.dim() == 3 else img[None] if img.dim() == 2 else _bad_shape(img, what, index)
    raise DataError(f"{what}: image {index} is a {type(img).__name__}; images must be tensors, numpy arrays or PIL "
                    f"images")


def _bad_shape(t, what, index):
    raise DataError(f"{what}: image {index} has shape {tuple(t.shape)}; an image must be (C, H, W) or (H, W)")


def _label(value, what: str, index) -> int:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if (value.numel() if isinstance(value, torch.Tensor) else value.size) != 1:
            raise DataError(f"{what}: label {index} has shape {tuple(value.shape)}; a label must be one integer class index")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{what}: label {index} is {value!r}; a label must be an integer class index")
    return int(value)


def _check_memory(n: int, per_image: int, what: str) -> None:
    need = n * per_image
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > MEMORY_FRACTION * available:
        raise DataError(f"{what}: {n} images need {need / 2**30:.1f} GiB in memory as 8-bit pixels but only "
                        f"{available / 2**30:.1f} GiB are free; fastrobust holds the data in memory, so use a "
                        f"subset (e.g. torch.utils.data.Subset) or a machine with more memory")


def _to_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
    """Images as uint8 pixels: uint8 as is, floats in [0, 1] scaled by 255 and rounded."""
    if x.dtype == torch.uint8:
        return x
    if not (x.is_floating_point()):
        raise DataError(f"{what}: images of dtype {x.dtype}; use floats in [0, 1] or uint8 in 0..255")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(f"{what}: pixel values span [{float(x.min()):.3g}, {float(x.max()):.3g}]; images must be in "
                        f"[0, 1] (do not normalise them in the data: use --normalize / fit(normalize=(mean, std)))")
    scaled = x.double() * 255
    pixels = scaled.round()
    if x.numel() and float((scaled - pixels).abs().max()) > 1e-3:
        warnings.warn(f"{what}: float images are stored as 8-bit pixels (rounded to multiples of 1/255), as "
                      f"every data set in fastrobust", stacklevel=3)
    return pixels.to(torch.uint8)


def _from_dataset(ds, what: str) -> Split:
    n = len(ds)
    if n == 0:
        return Split(torch.zeros(0, 1, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    first = _image(_pair(ds[0], what, 0)[0], what, 0)
    shape = tuple(first.shape)
    _check_memory(n, first.numel(), what)
    x = torch.empty((n, *shape), dtype=torch.uint8)
    y = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        img, label = _pair(ds[i], what, i)
        img = _image(img, what, i)
        if tuple(img.shape) != shape:
            raise DataError(f"{what}: image {i} has shape {tuple(img.shape)} but image 0 has {shape}; every image "
                            f"must have the same shape (resize them in the Dataset)")
        x[i] = _to_uint8(img, f"{what} image {i}")
        y[i] = _label(label, what, i)
    return Split(x, y)


def _from_batches(batches, what: str) -> Split:
    xs, ys = [], []
    for b, item in enumerate(batches):
        xb, yb = _pair(item, what, f"(batch {b})")
        if not isinstance(xb, torch.Tensor) or not isinstance(yb, torch.Tensor):
            raise DataError(f"{what}: batch {b} holds {type(xb).__name__} and {type(yb).__name__}; expected tensors "
                            f"(x: (N, C, H, W), y: (N,))")
        if xb.dim() == 3:
            xb = xb[:, None]
        if xb.dim() != 4 or yb.dim() != 1 or len(xb) != len(yb):
            raise DataError(f"{what}: images {tuple(xb.shape)} and labels {tuple(yb.shape)}; expected images (N, C, H, W) "
                            f"(or (N, H, W)) and labels (N,) of the same N")
        if yb.is_floating_point() or yb.dtype == torch.bool:
            raise DataError(f"{what}: labels of dtype {yb.dtype}; labels must be integer class indices")
        if xs and xb.shape[1:] != xs[0].shape[1:]:
            raise DataError(f"{what}: batch {b} has images {tuple(xb.shape[1:])} but batch 0 has "
                            f"{tuple(xs[0].shape[1:])}; every image must have the same shape")
        xs.append(_to_uint8(xb.detach().cpu(), what))
        ys.append(yb.detach().cpu().long())
    if not xs:
        raise DataError(f"{what}: the DataLoader yielded no batch")
    return Split(torch.cat(xs), torch.cat(ys))


def to_lazy_split(data, what: str) -> LazySplit:
    """``data`` as a :class:`LazySplit` whose items are read (in the DataLoader's workers) when needed.

    A Dataset (or a DataLoader's Dataset) is read item by item; its labels are taken from its ``targets``
    attribute when it has one (a sequence of integers, as torchvision's data sets), else read once here.
    A pair of tensors or a Split is already in memory and is wrapped as it is."""
    if isinstance(data, torch.utils.data.DataLoader):
        inner = data.dataset
        if isinstance(inner, torch.utils.data.IterableDataset) or not hasattr(inner, "__getitem__"):
            raise DataError(f"{what}: streaming needs a Dataset with __len__ and __getitem__; this DataLoader reads an "
                            f"iterable dataset: pass stream=False (the data is then held in memory)")
        data = inner
    if isinstance(data, (Split, LazySplit)) or (isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, (torch.Tensor, np.ndarray)) for t in data)):
        return lazy(to_split(data, what) if not isinstance(data, LazySplit) else data)
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise DataError(f"{what}: expected a torch Dataset of (image, label) pairs, a DataLoader or a pair of tensors "
                        f"(x, y); got a {type(data).__name__}")
    n = len(data)
    if n == 0:
        return lazy(to_split(data, what))
    images = DatasetImages(data, what)
    targets = getattr(data, "targets", None)
    if targets is not None and len(targets) == n:
        y = [_label(v, what, i) for i, v in enumerate(targets)]
    else:
        y = [_label(_pair(data[i], what, i)[1], what, i) for i in range(n)]
    return LazySplit(images, torch.tensor(y, dtype=torch.int64))


class DatasetImages:
    """The images of a user's Dataset, read (and checked, as :func:`to_split` does) when needed."""

    random = True   # it may draw random transforms: seeded per example and epoch (see stream._Items)

    def __init__(self, ds, what: str) -> None:
        self.ds, self.what = ds, what
        first = _image(_pair(ds[0], what, 0)[0], what, 0)
        _to_uint8(first, f"{what} image 0")   # refuses bad pixel values now; warns once about rounding
        self.shape = tuple(first.shape)

    def image(self, i: int) -> torch.Tensor:
        img = _image(_pair(self.ds[i], self.what, i)[0], self.what, i)
        if tuple(img.shape) != self.shape:
            raise DataError(f"{self.what}: image {i} has shape {tuple(img.shape)} but image 0 has {self.shape}; every "
                            f"image must have the same shape (resize them in the Dataset)")
        with warnings.catch_warnings():   # said once, for image 0
            warnings.simplefilter("ignore")
            return _to_uint8(img, f"{self.what} image {i}").contiguous()
