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
from .core import Data, DatasetInfo, Split, check_classes, split_meta
from .imagefolder import _channel_stats
from .stream import LazySplit, lazy

#: what ``fastrobust datasets`` and the docs say about ``--dataset package.module:factory``
FACTORY_HELP = """\
Your own data: --dataset package.module:factory
  factory is an importable callable returning (train, test): two torch Datasets of (image, label)
  pairs (an image is a (C, H, W) or (H, W) tensor of floats in [0, 1] or of uint8, a numpy array
  (H, W[, C]) or a PIL image; a label an integer in [0, classes)), or of dicts with an image and a
  label key (image/img/pixel_values..., label/labels/target...), or two (x, y) tensor pairs.
  It gets data_dir=--data-dir if it declares that parameter. It may return a third element, a dict
  of facts about the data: num_classes, classes (names), eps, alpha, crop_pad, flip (training
  augmentation: random crop with that padding and horizontal flips; default none). It may instead
  return a mapping of splits: {"train": ..., "test": ..., "validation": ..., "facts": {...}} or a
  Hugging Face DatasetDict (a datasets.Dataset's image and label columns are found from its
  features; class names come from a ClassLabel).
  The data is read once and held in memory as 8-bit pixels, like the built-in data sets; its
  shapes and labels are checked before training. The held-out validation split is taken from
  train (--val-size). Example: fastrobust train --dataset mypkg.data:make_data --model mypkg.nets:make_net"""

_INFO_KEYS = {"num_classes", "classes", "eps", "alpha", "crop_pad", "flip"}
MEMORY_FRACTION = 0.8   # of the available memory that the converted data may take


def load_factory(ref: str, data_dir: str | None = None, stream: bool = False) -> Data:
    """Call the user's data factory ``ref`` and convert what it returns into :class:`Data`: (train, test) or
    (train, test, facts), or a mapping of splits (a Hugging Face ``DatasetDict``, or ``{"train": ...,
    "test": ..., "validation": ..., "facts": {...}}``: :func:`_from_mapping`). With ``stream``, splits are
    read item by item when needed (:func:`to_lazy_split`)."""
    result = call_factory(ref, "--dataset", {}, {"data_dir": data_dir})
    if isinstance(result, Data):   # already converted (a factory returning fastrobust Data)
        return result
    if isinstance(result, Mapping):
        return _from_mapping(result, f"--dataset {ref!r}", ref, stream)
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise DataError(f"--dataset {ref!r} returned a {type(result).__name__}; it must return (train, test), "
                        f"(train, test, facts) or a mapping of splits ({{'train': ..., 'test': ...}}, e.g. a "
                        f"Hugging Face DatasetDict)")
    facts = result[2] if len(result) == 3 else {}
    _check_facts(facts, f"--dataset {ref!r}: the third element")
    convert = to_lazy_split if stream else to_split
    train = convert(result[0], f"--dataset {ref!r} train")
    test = convert(result[1], f"--dataset {ref!r} test")
    return make_data(ref, train, test, **facts)


def _check_facts(facts, what: str) -> None:
    if not isinstance(facts, Mapping) or set(facts) - _INFO_KEYS:
        raise DataError(f"{what} must be a dict with keys among {', '.join(sorted(_INFO_KEYS))}; got {facts!r}")


_TRAIN_KEYS, _TEST_KEYS, _VAL_KEYS = ("train",), ("test",), ("validation", "val", "valid")


def _from_mapping(result: Mapping, what: str, name: str, stream: bool) -> Data:
    """A mapping of splits as :class:`Data`: ``train`` (required), ``test``, ``validation`` (or ``val``,
    ``valid``) and ``facts`` (the dict of the tuple form). A validation split is the run's held-out split;
    without a test split it is the test split instead (so that the run reports test accuracy), and the
    held-out split is taken from train. Other splits (e.g. ``unsupervised``) are left out, said so."""
    keys = {str(k).lower(): k for k in result}
    if "train" not in keys:
        raise DataError(f"{what} returned a mapping of splits without a 'train' split (it has "
                        f"{', '.join(map(repr, result)) or 'none'}); name the training split 'train', e.g. "
                        f"{{'train': train, 'test': test}}")
    facts = result[keys["facts"]] if "facts" in keys else {}
    _check_facts(facts, f"{what}: 'facts'")
    pick = lambda names: next((result[keys[n]] for n in names if n in keys), None)   # noqa: E731
    train, test, val = pick(_TRAIN_KEYS), pick(_TEST_KEYS), pick(_VAL_KEYS)
    notes = []
    if test is None and val is not None:
        test, val = val, None
        notes.append(f"{what}: no 'test' split: the validation split is the test split, and the held-out split "
                     f"for checkpoint selection is taken from 'train' (val_size)")
    ignored = sorted(str(k) for k in result if str(k).lower() not in {*_TRAIN_KEYS, *_TEST_KEYS, *_VAL_KEYS, "facts"})
    if ignored:
        notes.append(f"{what}: split(s) {', '.join(map(repr, ignored))} left out (fastrobust uses 'train', "
                     f"'test' and 'validation')")
    convert = to_lazy_split if stream else to_split
    parts = {part: None if data is None else convert(data, f"{what} {part}")
             for part, data in (("train", train), ("test", test), ("validation", val))}
    data = make_data(name, parts["train"], parts["test"], parts["validation"], **facts)
    data.notes[:0] = notes
    return data


def make_data(name: str, train: Split, test: Split | None = None, val: Split | None = None, *,
              num_classes: int | None = None, classes=(), eps: float = 8 / 255, alpha: float = 2 / 255,
              crop_pad: int = 0, flip: bool = False) -> Data:
    """:class:`Data` from converted splits: shapes agree, labels lie in [0, num_classes).

    ``num_classes`` defaults to ``len(classes)``, else to the largest label + 1. ``classes`` defaults to the
    class names the conversion found (a Hugging Face ClassLabel). A missing test split is an empty one
    (the run then reports no test accuracy). Training data of fewer than 2 classes is refused, and so is
    a test or validation split of one class; the conversion's warnings become :attr:`Data.notes`.
    """
    if len(train) == 0:
        raise DataError(f"{name}: the training data is empty")
    test = test if test is not None else train.subset(slice(0, 0))
    parts = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    if not classes:
        classes = split_meta(train).get("classes", ())
        if classes and num_classes is not None and len(classes) != num_classes:
            classes = ()   # the given num_classes wins over names found in the data
    notes = [n for split in parts.values() for n in split_meta(split).get("notes", ())]
    for part, split in parts.items():
        check_classes(split, f"{name}: the {_PART_WORDS[part]}",
                      "give images of at least 2 classes (labels 0, 1, ...)" if part == "train" else
                      f"give a {_PART_WORDS[part]} with images of every class (or none)")
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
    return Data(info, train, test, val, notes)


_PART_WORDS = {"train": "training data", "test": "test data", "val": "validation data"}


def to_split(data, what: str) -> Split:
    """``data`` (a Split, an (x, y) pair of tensors, a DataLoader or a Dataset) as an in-memory uint8 Split."""
    if isinstance(data, Split):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        return _from_batches([(torch.as_tensor(data[0]), torch.as_tensor(data[1]))], what)
    if is_hf_dataset(data):
        items = HFItems(data, what)
        return _with_meta(_from_dataset(items, what), classes=items.classes)
    if isinstance(data, torch.utils.data.DataLoader):
        if is_hf_dataset(data.dataset) and _standard_order(data):   # its items are dicts: read them as above
            return to_split(data.dataset, what)
        batches, notes = _loader_in_order(data, what)
        return _with_meta(_from_batches(batches, what), notes=notes)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _from_dataset(data, what)
    raise DataError(f"{what}: expected a torch Dataset of (image, label) pairs, a DataLoader or a pair of tensors "
                    f"(x, y); got a {type(data).__name__}")


def _with_meta(split, **meta):
    split.meta.update({k: v for k, v in meta.items() if v}) if hasattr(split, "meta") else setattr(
        split, "meta", {k: v for k, v in meta.items() if v})
    return split


def _standard_order(loader) -> bool:
    """Whether ``loader`` reads every item of a map-style dataset once per pass, in order or shuffled (a
    SequentialSampler or a RandomSampler without replacement over the whole dataset, in plain batches)."""
    from torch.utils.data import BatchSampler, IterableDataset, RandomSampler, SequentialSampler

    ds, sampler = loader.dataset, loader.sampler
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__") or type(loader.batch_sampler) is not BatchSampler:
        return False
    if loader.batch_sampler.sampler is not sampler:
        return False
    if type(sampler) is SequentialSampler:
        return True
    return type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(ds)


def _loader_in_order(loader, what: str):
    """The batches to read of a DataLoader given as data, and warnings for the run.

    A DataLoader that reads its whole dataset (shuffled or not) is read through its dataset in order, in
    batches of its size with its collate_fn and nothing dropped: the data (and so the held-out validation
    split) is the same in every run, and ``drop_last=True`` loses nothing (said once). Any other DataLoader
    (its own sampler, an iterable dataset) is read as it is, with a warning where images are dropped or
    drawn without a seeded generator."""
    from torch.utils.data import DataLoader

    notes = []
    if _standard_order(loader):
        n, size = len(loader.dataset), loader.batch_size
        if loader.drop_last and size and n % size:
            notes.append(f"{what}: the DataLoader has drop_last=True, which drops the last {n % size} of the {n} "
                         f"images in each pass: all {n} are read (through its dataset, in order)")
        ordered = DataLoader(loader.dataset, batch_size=size, shuffle=False, drop_last=False,
                             collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                             worker_init_fn=loader.worker_init_fn,
                             multiprocessing_context=loader.multiprocessing_context if loader.num_workers else None)
        return ordered, notes
    sampler = getattr(loader.batch_sampler, "sampler", None) or loader.sampler
    size = loader.batch_size
    if loader.drop_last and size:
        try:
            dropped = len(sampler) % size
            if dropped:
                notes.append(f"{what}: the DataLoader has drop_last=True: {dropped} of the {len(sampler)} images it "
                             f"draws are dropped; pass drop_last=False to train on them")
        except TypeError:
            notes.append(f"{what}: the DataLoader has drop_last=True: the images of its last, incomplete batch are "
                         f"dropped; pass drop_last=False to train on them")
    for s in {sampler, getattr(loader.batch_sampler, "sampler", None), loader.batch_sampler} - {None}:
        if hasattr(s, "generator") and s.generator is None and type(s).__name__ != "SequentialSampler":
            notes.append(f"{what}: the DataLoader's {type(s).__name__} draws without a seeded generator, so the "
                         f"images read, and the validation split held out of them, change from run to run; give "
                         f"it generator=torch.Generator().manual_seed(0)")
            break
    return loader, notes


#: the keys an item (or a DataLoader's batch) given as a dict may hold its image and its label under
IMAGE_KEYS = ("image", "img", "images", "pixel_values", "x", "input", "inputs")
LABEL_KEYS = ("label", "labels", "target", "targets", "y", "class", "fine_label")


def _pair(item, what: str, index) -> tuple:
    if isinstance(item, Mapping):
        return _keyed_pair(item, what, index)
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{what}: item {index} is a {type(item).__name__}; each item must be an (image, label) pair "
                        f"(or a dict with an image key such as 'image' and a label key such as 'label')")
    return item[0], item[1]


def _keyed_pair(item: Mapping, what: str, index) -> tuple:
    """(image, label) of a dict item: the one key of each kind it has (any case)."""
    keys = {str(k).lower(): k for k in item}
    image = [keys[k] for k in IMAGE_KEYS if k in keys]
    label = [keys[k] for k in LABEL_KEYS if k in keys]
    if len(image) == 1 and len(label) == 1:
        return item[image[0]], item[label[0]]
    found = ", ".join(map(repr, item)) or "none"
    problem = (f"{len(image)} image keys ({', '.join(map(repr, image))})" if len(image) > 1 else
               "no image key" if not image else
               f"{len(label)} label keys ({', '.join(map(repr, label))})" if len(label) > 1 else "no label key")
    raise DataError(f"{what}: item {index} is a dict with the keys {found}: {problem}. fastrobust reads the image "
                    f"from one of {', '.join(IMAGE_KEYS)} and the label from one of {', '.join(LABEL_KEYS)}: keep "
                    f"exactly one of each (rename or drop the others), or return (image, label) pairs")


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


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite pixels (they would become 0 silently as 8-bit pixels)."""
    if not x.is_floating_point():
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        where = f" (first in image {int((~finite).flatten(1).any(1).nonzero()[0])})" if x.dim() == 4 else ""
        raise DataError(f"{what}: {bad} pixel value(s) are NaN or infinite{where}; fix or drop those images "
                        f"(e.g. torch.nan_to_num(x, nan=0.0), or remove them) before training")


def _to_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
    """Images as uint8 pixels: uint8 as is, floats in [0, 1] scaled by 255 and rounded."""
    if x.dtype == torch.uint8:
        return x
    if not (x.is_floating_point()):
        raise DataError(f"{what}: images of dtype {x.dtype}; use floats in [0, 1] or uint8 in 0..255")
    _check_finite(x, what)
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
        xb = xb.detach().cpu()
        _check_finite(xb, what if isinstance(batches, list) else f"{what} (batch {b})")
        xs.append(_to_uint8(xb, what))
        ys.append(yb.detach().cpu().long())
    if not xs:
        raise DataError(f"{what}: the DataLoader yielded no batch")
    return Split(torch.cat(xs), torch.cat(ys))


def to_lazy_split(data, what: str) -> LazySplit:
    """``data`` as a :class:`LazySplit` whose items are read (in the DataLoader's workers) when needed.

    A Dataset (or a DataLoader's Dataset) is read item by item; its labels are taken from its ``targets``
    attribute when it has one (a sequence of integers, as torchvision's data sets), else read once here.
    A pair of tensors or a Split is already in memory and is wrapped as it is."""
    notes, classes = [], ()
    if isinstance(data, torch.utils.data.DataLoader):
        inner = data.dataset
        if isinstance(inner, torch.utils.data.IterableDataset) or not hasattr(inner, "__getitem__"):
            raise DataError(f"{what}: streaming needs a Dataset with __len__ and __getitem__; this DataLoader reads an "
                            f"iterable dataset: pass stream=False (the data is then held in memory)")
        if not _standard_order(data):
            notes.append(f"{what}: streaming reads the DataLoader's whole dataset, in order: its own sampler "
                         f"({type(data.sampler).__name__}) is not used; give the images to train on as a Dataset "
                         f"(e.g. torch.utils.data.Subset)")
        elif data.drop_last and data.batch_size and len(inner) % data.batch_size:
            notes.append(f"{what}: the DataLoader has drop_last=True: all {len(inner)} images of its dataset are read "
                         f"all the same (fastrobust makes its own minibatches)")
        data = inner
    if is_hf_dataset(data):
        data = HFItems(data, what)
        classes = data.classes
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
    return _with_meta(LazySplit(images, torch.tensor(y, dtype=torch.int64)), notes=notes, classes=classes)


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


# ---- Hugging Face datasets ---------------------------------------------------------------------------

_INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}


def is_hf_dataset(data) -> bool:
    """Whether ``data`` is a Hugging Face ``datasets.Dataset`` (or IterableDataset); ``datasets`` is not imported."""
    return type(data).__module__.split(".")[0] == "datasets" and hasattr(data, "features") and \
        hasattr(data, "column_names")


def _depth(feature) -> tuple[int, str | None]:
    """How many list levels ``feature`` (a nested List/Sequence) has, and the dtype of its numbers."""
    depth = 0
    while type(feature).__name__ in ("List", "LargeList", "Sequence") or isinstance(feature, list):
        feature = feature[0] if isinstance(feature, list) else feature.feature
        depth += 1
    return depth, getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else None


def _is_image_feature(feature) -> bool:
    kind = type(feature).__name__
    if kind == "Image" or kind in ("Array2D", "Array3D"):
        return True
    depth, dtype = _depth(feature)
    return depth in (2, 3) and dtype in _INT_DTYPES | _FLOAT_DTYPES


def _is_label_feature(feature) -> bool:
    return type(feature).__name__ == "ClassLabel" or (type(feature).__name__ == "Value" and feature.dtype in _INT_DTYPES)


def hf_columns(ds, what: str) -> tuple[str, str]:
    """The image column and the label column of a Hugging Face Dataset, found from its features: an
    ``Image`` feature (or an array / nested list of numbers) and a ``ClassLabel`` (or integer) column.
    Where several fit, an Image feature wins over arrays and a ClassLabel over integers; where that
    still leaves several, the error says how to keep one of each."""
    features = ds.features
    picked = []
    for role, test, preferred in (("image", _is_image_feature, "Image"), ("label", _is_label_feature, "ClassLabel")):
        found = [c for c, f in features.items() if test(f)]
        if len(found) > 1:
            best = [c for c in found if type(features[c]).__name__ == preferred]
            found = best if len(best) == 1 else found
        picked.append(found)
    (images, labels), columns = picked, list(features)
    if len(images) == 1 and len(labels) == 1 and images != labels:
        return images[0], labels[0]
    example = f"ds.select_columns([{(images or ['<image column>'])[0]!r}, {(labels or ['<label column>'])[0]!r}])"
    problems = []
    for role, found, kinds in (("image", images, "an Image feature, or an array of pixels"),
                               ("label", labels, "a ClassLabel or integer column")):
        if not found:
            problems.append(f"no {role} column ({kinds})")
        elif len(found) > 1:
            problems.append(f"{len(found)} possible {role} columns ({', '.join(map(repr, found))})")
    raise DataError(f"{what}: a Hugging Face Dataset with columns {', '.join(map(repr, columns))} has "
                    f"{' and '.join(problems)}; keep one image and one label column, e.g. {example} (cast a label "
                    f"column with ds.class_encode_column(name))")


class HFItems:
    """A Hugging Face ``datasets.Dataset`` as (image, label) pairs, for :func:`_from_dataset` and
    :class:`DatasetImages`; ``classes``: the names of a ClassLabel label column; ``targets``: its labels."""

    def __init__(self, ds, what: str) -> None:
        if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
            raise DataError(f"{what}: a streaming Hugging Face IterableDataset cannot be held or indexed; load it "
                            f"without streaming=True, or take part of it: datasets.Dataset.from_list(list(ds.take(n)))")
        self.image_column, self.label_column = hf_columns(ds, what)
        # a transform of the user's (ds.set_transform / with_transform) is kept, and reads what it reads; otherwise
        # the two columns, in Python objects (PIL images, lists), whatever output format was set
        custom = (getattr(ds, "format", None) or {}).get("type") == "custom"
        self.ds = ds if custom else ds.select_columns([self.image_column, self.label_column]).with_format(None)
        feature = ds.features[self.label_column]
        self.classes = tuple(feature.names) if type(feature).__name__ == "ClassLabel" else ()
        self.what = what
        self._targets = None

    @property
    def targets(self) -> list:
        if self._targets is None:   # one column read, without decoding the images (nor a transform)
            self._targets = list(self.ds.with_format(None)[self.label_column])
        return self._targets

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.ds[int(i)]
        if self.image_column not in item or self.label_column not in item:
            raise DataError(f"{self.what}: the dataset's transform returns the keys {', '.join(map(repr, item))}; "
                            f"fastrobust reads the image column {self.image_column!r} and the label column "
                            f"{self.label_column!r}: keep those names in the transform's output")
        image = item[self.image_column]
        if isinstance(image, list):
            image = np.asarray(image)
            if image.dtype.kind in "iu":
                if image.size and (image.min() < 0 or image.max() > 255):
                    raise DataError(f"{self.what}: image {i} holds integer pixels in [{image.min()}, {image.max()}]; "
                                    f"integer pixels must be 0..255 (or give floats in [0, 1])")
                image = image.astype(np.uint8)
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] not in (1, 3, 4) \
                and image.shape[0] in (1, 3):
            image = torch.from_numpy(np.ascontiguousarray(image))   # (C, H, W), as a tensor is read
        return image, item[self.label_column]
