"""Helpers shared by the file-format readers: the default data folder, reading
(possibly gzipped) files and turning validated numpy arrays into a :class:`Split`."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .core import Split

DATA_ENV = "FASTROBUST_DATA"


def default_data_dir() -> Path:
    """Where data sets are looked for and downloaded to: ``$FASTROBUST_DATA``, else ``~/.cache/fastrobust``."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "fastrobust").expanduser()


def read_bytes(path: Path) -> bytes:
    """The contents of ``path``, decompressed if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is truncated or corrupted ({e}): delete it and download it again") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def make_split(x: np.ndarray, y: np.ndarray, num_classes: int, source: str) -> Split:
    """A Split from uint8 images ``x`` (N, C, H, W) and integer labels ``y`` (N,),
    checking that the counts match and the labels lie in [0, num_classes)."""
    if len(x) != len(y):
        raise DataError(f"{source}: {len(x)} images but {len(y)} labels; the files do not belong together")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0]
        raise DataError(f"{source}: label {bad} is outside [0, {num_classes}); the file is corrupted or not this data set")
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.from_numpy(y.astype(np.int64)))
