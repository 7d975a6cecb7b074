"""Image-folder data sets: ``root/train/<class>/*.png|jpg|jpeg`` and ``root/test/<class>/...``.

Images are decoded once with PIL and cached as uint8 arrays in
``root/.fastrobust-cache-<split>.npz`` (or, if ``root`` is read-only, under
``default_data_dir()/imagefolder-cache/<hash of root>/``). A cache is reused
while the fingerprint of the image files (names, sizes, modification times)
matches. Caches are written atomically and only after the whole data set was
decoded and checked, so a failed load caches nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .core import Data, DatasetInfo, Split
from .files import default_data_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_CACHE_VERSION = 1
_LAYOUT = "root/train/<class>/*.png|jpg|jpeg and root/test/<class>/..."


def _class_dirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: an image folder data set needs {_LAYOUT}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class folders: an image folder data set needs {_LAYOUT}")
    if len(classes) < 2:
        raise DataError(f"{folder} has one class folder ({classes[0]!r}): a classifier needs at least 2 classes, and "
                        f"an accuracy on one class means nothing; add a folder of images per class ({_LAYOUT})")
    return classes


def _image_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image of a split, in class then file-name order."""
    files = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if not found:
            raise DataError(f"class folder {folder / name} holds no {'/'.join(IMAGE_SUFFIXES)} images: add images or remove the folder")
        files += [(p, label) for p in found]
    return files


def _fingerprint(root: Path, files: list[tuple[Path, int]], classes: list[str]) -> str:
    stats = [(str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p, _ in files for st in [p.stat()]]
    return hashlib.sha256(json.dumps([_CACHE_VERSION, classes, stats]).encode()).hexdigest()


def _cache_paths(root: Path, split: str) -> list[Path]:
    """Where a split's cache may live: next to the images, else in the user's data folder."""
    name = f".fastrobust-cache-{split}.npz"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / name, default_data_dir() / "imagefolder-cache" / key / name]


def _read_cache(root: Path, split: str, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
    for path in _cache_paths(root, split):
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fingerprint:
                    return z["x"], z["y"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue  # absent or damaged: try the next place, else decode again
    return None


def _write_cache(root: Path, split: str, x: np.ndarray, y: np.ndarray, classes: list[str], fingerprint: str) -> None:
    """Cache a decoded split in the first writable place; caching is skipped if there is none."""
    for path in _cache_paths(root, split):
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x=x, y=y, classes=np.array(classes), fingerprint=np.array(fingerprint))
            os.replace(tmp, path)
            return
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _decode(files: list[tuple[Path, int]], desc: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decode the images into a uint8 (N, C, H, W) array: C is 1 if every image
    is grayscale, else 3 (grayscale images are replicated into RGB)."""
    x = None
    gray = True
    bar = tqdm(files, desc=desc, unit="img", disable=None if progress else True)   # None: on a terminal only
    for i, (path, _) in enumerate(bar):
        try:
            with Image.open(path) as im:
                im.load()
                is_gray = im.mode in _GRAY_MODES
                a = np.asarray(im.convert("L" if is_gray else "RGB"))
        except Exception as e:  # PIL reports bad files in many exception types
            raise DataError(f"cannot decode image {path} ({type(e).__name__}: {e}): fix or remove the file") from e
        if x is None:
            x = np.empty((len(files), *a.shape[:2], 3), dtype=np.uint8)
        elif a.shape[:2] != x.shape[1:3]:
            raise DataError(
                f"{path} is {a.shape[0]}x{a.shape[1]} (HxW) but {files[0][0]} is {x.shape[1]}x{x.shape[2]}: "
                "all images must have the same size; resize them first"
            )
        x[i] = a[..., None] if is_gray else a
        gray &= is_gray
    x = x[..., :1] if gray else x
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.array([label for _, label in files], dtype=np.int64)


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images in [0, 1] units (via value histograms, float64)."""
    v = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        h = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        mean = (h @ v) / h.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(max((h @ (v * v)) / h.sum() - mean * mean, 0.0))))
    return tuple(means), tuple(stds)


def load(root: Path, progress: bool = True) -> Data:
    """Load (and cache) the image folder at ``root``."""
    root = Path(root)
    classes = _class_dirs(root / "train")
    test_classes = _class_dirs(root / "test")
    if test_classes != classes:
        missing, extra = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
        raise DataError(
            f"{root}/test must have the same class folders as {root}/train: "
            f"missing in test: {missing or 'none'}, not in train: {extra or 'none'}"
        )
    arrays, to_cache, firsts = {}, [], {}
    for split in ("train", "test"):
        files = _image_files(root / split, classes)
        firsts[split] = files[0][0]
        fingerprint = _fingerprint(root, files, classes)
        arrays[split] = _read_cache(root, split, fingerprint)
        if arrays[split] is None:
            arrays[split] = _decode(files, f"decoding {root / split}", progress)
            to_cache.append((split, fingerprint))
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    if xtr.shape[2:] != xte.shape[2:]:
        raise DataError(
            f"test image {firsts['test']} is {xte.shape[2]}x{xte.shape[3]} (HxW) but training image {firsts['train']} "
            f"is {xtr.shape[2]}x{xtr.shape[3]}: all images must have the same size; resize them first"
        )
    for split, fingerprint in to_cache:
        _write_cache(root, split, *arrays[split], classes, fingerprint)
    channels = max(xtr.shape[1], xte.shape[1])  # a grayscale split joins an RGB one as RGB
    xtr, xte = (a if a.shape[1] == channels else np.repeat(a, channels, axis=1) for a in (xtr, xte))
    mean, std = _channel_stats(xtr)
    h, w = xtr.shape[2:]
    big = h >= 32 and w >= 32
    info = DatasetInfo(
        name="imagefolder", num_classes=len(classes), channels=channels, image_size=(h, w), mean=mean, std=std,
        crop_pad=4 if big else 0, flip=big, eps=8 / 255, alpha=2 / 255, classes=tuple(classes),
    )
    return Data(info, Split(torch.from_numpy(xtr), torch.from_numpy(ytr)), Split(torch.from_numpy(xte), torch.from_numpy(yte)))


def _names(folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Paths (relative to folder's parent, as one byte array) and labels of a split's images, in the order
    of :func:`_image_files`, without a Python object per file held."""
    names, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(e.name for e in os.scandir(folder / name)
                       if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and not e.name.startswith(".")
                       and e.is_file())
        if not found:
            raise DataError(f"class folder {folder / name} holds no {'/'.join(IMAGE_SUFFIXES)} images: add images or remove the folder")
        names.append(np.array([os.fsencode(f"{folder.name}/{name}/{f}") for f in found]))
        labels.append(np.full(len(found), label, dtype=np.int64))
    width = max(a.dtype.itemsize for a in names)
    return np.concatenate([a.astype(f"S{width}") for a in names]), np.concatenate(labels)


def stream(root: Path) -> Data:
    """The image folder at ``root`` with its images read when needed (``--stream``): nothing is decoded
    or cached up front. The channels (1 if every sampled image is grayscale, else 3), the image size and
    the mean and std come from an evenly spaced sample of the training images; every image read later
    is converted to those channels and must have that size."""
    from .stream import STATS_SAMPLE, FolderImages, LazySplit

    root = Path(root)
    classes = _class_dirs(root / "train")
    if _class_dirs(root / "test") != classes:
        test_classes = _class_dirs(root / "test")
        missing, extra = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
        raise DataError(
            f"{root}/test must have the same class folders as {root}/train: "
            f"missing in test: {missing or 'none'}, not in train: {extra or 'none'}"
        )
    splits = {split: _names(root / split, classes) for split in ("train", "test")}
    names = splits["train"][0]
    picks = np.unique(np.linspace(0, len(names) - 1, min(STATS_SAMPLE, len(names))).round().astype(np.int64))
    sample = _decode([(root / os.fsdecode(names[i]), 0) for i in picks], "", False)[0]
    mode = "L" if sample.shape[1] == 1 else "RGB"
    size = tuple(sample.shape[2:])
    made = {split: LazySplit(FolderImages(root, n, mode, size), torch.from_numpy(y)) for split, (n, y) in splits.items()}
    mean, std = _channel_stats(sample)
    h, w = size
    big = h >= 32 and w >= 32
    info = DatasetInfo(
        name="imagefolder", num_classes=len(classes), channels=1 if mode == "L" else 3, image_size=(h, w), mean=mean,
        std=std, crop_pad=4 if big else 0, flip=big, eps=8 / 255, alpha=2 / 255, classes=tuple(classes),
    )
    return Data(info, made["train"], made["test"])
