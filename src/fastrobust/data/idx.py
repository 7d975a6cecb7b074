"""The IDX format of MNIST and Fashion-MNIST (gzipped or not; dash or dot names)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .core import DatasetInfo, Split
from .files import make_split, read_bytes

#: The four files, by their canonical (dash, uncompressed) names.
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_UBYTE = 0x08


def variants(name: str) -> tuple[str, ...]:
    """Accepted spellings of a canonical file name, most usual first:
    ``train-images-idx3-ubyte.gz``, ``train-images-idx3-ubyte``,
    ``train-images.idx3-ubyte.gz``, ``train-images.idx3-ubyte``."""
    head, _, tail = name.rpartition("-idx")
    dotted = f"{head}.idx{tail}"
    return (f"{name}.gz", name, f"{dotted}.gz", dotted)


def encode(array: np.ndarray) -> bytes:
    """IDX bytes (header and data) of a uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX encoding supports uint8 arrays only, got {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, _UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def read(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions, validating its header and length."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}): check the file")
    if data[2] != _UBYTE or data[3] != ndim:
        raise DataError(
            f"{path}: expected an unsigned-byte IDX file with {ndim} dimension(s), the header says type 0x{data[2]:02x} "
            f"with {data[3]} dimension(s); is it the right file?"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path} is truncated (the header is incomplete): delete it and download it again")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    expected = header_len + int(np.prod(shape))
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes after the data"
        raise DataError(
            f"{path} {problem}: its header promises shape {shape} ({expected} bytes) but it holds {len(data)} bytes; "
            "delete it and download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def load_pair(images: Path, labels: Path, info: DatasetInfo) -> Split:
    """A Split from an IDX image file (N, H, W) and its label file (N,)."""
    x = read(images, 3)
    if x.shape[1:] != info.image_size:
        raise DataError(f"{images}: images are {x.shape[1]}x{x.shape[2]}, {info.name} images are {info.image_size[0]}x{info.image_size[1]}")
    return make_split(x[:, None], read(labels, 1), info.num_classes, f"{images} and {labels}")


def load(paths: dict[str, Path], info: DatasetInfo) -> tuple[Split, Split, tuple[str, ...]]:
    """Train and test splits from the four located files (keyed by canonical name)."""
    train = load_pair(paths[FILES[0]], paths[FILES[1]], info)
    test = load_pair(paths[FILES[2]], paths[FILES[3]], info)
    return train, test, info.classes
