"""The official python-pickle releases of CIFAR-10 and CIFAR-100.

The pickles are read with a restricted unpickler that can rebuild numpy
arrays and nothing else, so a tampered file cannot run code.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .core import DatasetInfo, Split
from .files import make_split

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")

# Everything the official files (pickled by Python 2) and files written the
# same way by Python 3 (protocol 2, bytes keys) refer to.
_ALLOWED = {
    ("_codecs", "encode"): _codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(mod, name): getattr(_multiarray, name)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR pickle") from None


def unpickle(path: Path) -> dict[str, Any]:
    """The dict stored in a CIFAR pickle, with its bytes keys decoded to str."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except Exception as e:  # unpickling reports damage in many exception types
        raise DataError(f"{path} is not a valid CIFAR pickle ({type(e).__name__}: {e}): delete it and download it again") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a dict as the CIFAR pickles do: is it the right file?")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _entry(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise DataError(f"{path} has no {key!r} entry: is it the right file?")
    return d[key]


def _batch(path: Path, label_key: str, num_classes: int) -> Split:
    d = unpickle(path)
    x = _entry(d, "data", path)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got a {got}: is it the right file?")
    try:
        y = np.asarray(_entry(d, label_key, path), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {label_key!r} is not a list of integer labels ({e})") from e
    return make_split(x.reshape(-1, 3, 32, 32), y, num_classes, str(path))


def _split(paths: list[Path], label_key: str, num_classes: int) -> Split:
    parts = [_batch(p, label_key, num_classes) for p in paths]
    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _class_names(path: Path, key: str, num_classes: int) -> tuple[str, ...]:
    names = _entry(unpickle(path), key, path)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path}: {key!r} must list {num_classes} class names: is it the right file?")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(paths: dict[str, Path], info: DatasetInfo) -> tuple[Split, Split, tuple[str, ...]]:
    """Train and test splits of CIFAR-10 from the files of ``cifar-10-batches-py``."""
    train = _split([paths[f"data_batch_{i}"] for i in range(1, 6)], "labels", 10)
    test = _split([paths["test_batch"]], "labels", 10)
    return train, test, _class_names(paths["batches.meta"], "label_names", 10)


def load_cifar100(paths: dict[str, Path], info: DatasetInfo) -> tuple[Split, Split, tuple[str, ...]]:
    """Train and test splits of CIFAR-100 (fine labels) from the files of ``cifar-100-python``."""
    train = _split([paths["train"]], "fine_labels", 100)
    test = _split([paths["test"]], "fine_labels", 100)
    return train, test, _class_names(paths["meta"], "fine_label_names", 100)
