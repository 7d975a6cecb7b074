"""The official MATLAB release of SVHN (``train_32x32.mat``, ``test_32x32.mat``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from ..errors import DataError
from .core import DatasetInfo, Split
from .files import make_split

FILES = ("train_32x32.mat", "test_32x32.mat")


def load_mat(path: Path) -> Split:
    """A Split from one SVHN ``.mat`` file: ``X`` is (32, 32, 3, N) uint8 and
    ``y`` is (N, 1) with digits 1..10, where 10 stands for the digit 0."""
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy reports damaged files in many exception types
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}): delete it and download it again") from e
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "nothing"
        raise DataError(f"{path}: 'X' must be a uint8 array of shape (32, 32, 3, N), got {got}: is it the right file?")
    if not isinstance(y, np.ndarray) or y.size != y.shape[0] or not np.issubdtype(y.dtype, np.number):
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else "nothing"
        raise DataError(f"{path}: 'y' must be a numeric array of shape (N, 1), got {got}: is it the right file?")
    y = y.reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels must be digits 1..10 (10 for the digit 0), found {y.min()}..{y.max()}")
    return make_split(x.transpose(3, 2, 0, 1), y % 10, 10, str(path))


def load(paths: dict[str, Path], info: DatasetInfo) -> tuple[Split, Split, tuple[str, ...]]:
    """Train and test splits of SVHN from the two located files."""
    return load_mat(paths[FILES[0]]), load_mat(paths[FILES[1]]), info.classes
