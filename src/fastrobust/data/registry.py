"""The named data sets: their static infos, where their files are looked for,
and :func:`load_dataset`, which finds (or downloads) and loads them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError, DataError
from ..factories import is_factory_ref
from . import cifar, idx, imagefolder, svhn, user
from . import download as downloader
from .core import Data, DatasetInfo, Split
from .files import default_data_dir
from .stream import lazy

NO_DOWNLOAD_ENV = "FASTROBUST_NO_DOWNLOAD"
EMBEDDED_DIR = Path(__file__).parent / "embedded"

_DIGITS = tuple(str(d) for d in range(10))
_MNIST = DatasetInfo("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,), 0, False, 0.3, 0.01, _DIGITS)
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: Static infos of the named data sets (an image folder's info is computed when it is loaded).
DATASETS: dict[str, DatasetInfo] = {
    "mnist": _MNIST,
    "mnist-subset": replace(_MNIST, name="mnist-subset"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, (28, 28), (0.2860,), (0.3530,), 0, False, 0.1, 0.01, _FASHION_CLASSES),
    "cifar10": DatasetInfo("cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           4, True, 8 / 255, 2 / 255, _CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            4, True, 8 / 255, 2 / 255),
    "svhn": DatasetInfo("svhn", 10, 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        4, False, 8 / 255, 2 / 255, _DIGITS),
}

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100", "image-folder": "imagefolder"}


@dataclass(frozen=True)
class _Source:
    """Where a named data set's files are looked for and how they are read."""

    files: tuple[str, ...]  # canonical names of the files the reader needs
    dirs: tuple[str, ...]  # folders searched, relative to the data folder ("" = the data folder itself)
    read: Callable[[dict[str, Path], DatasetInfo], tuple[Split, Split, tuple[str, ...]]]
    hint: str  # how to provide the files by hand; {dest} is the data set's download folder
    variants: Callable[[str], tuple[str, ...]] = lambda name: (name,)  # accepted spellings of a file name


_IDX_HINT = "put " + ", ".join(f"{f}.gz" for f in idx.FILES) + " (gzipped or not) into {dest}"


def _cifar_hint(archive: str, folder: str, files: tuple[str, ...]) -> str:
    return f"unpack {archive} into {{dest}}, giving {{dest}}/{folder}/ with {', '.join(files)}"


_SOURCES = {
    "mnist": _Source(idx.FILES, ("", "mnist", "mnist/raw", "MNIST/raw"), idx.load, _IDX_HINT, idx.variants),
    "fashion-mnist": _Source(idx.FILES, ("", "fashion-mnist", "fashion-mnist/raw", "FashionMNIST/raw"), idx.load,
                             _IDX_HINT, idx.variants),
    "cifar10": _Source(cifar.CIFAR10_FILES, ("", "cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
                       cifar.load_cifar10, _cifar_hint("cifar-10-python.tar.gz", "cifar-10-batches-py", cifar.CIFAR10_FILES)),
    "cifar100": _Source(cifar.CIFAR100_FILES, ("", "cifar-100-python", "cifar100", "cifar100/cifar-100-python"),
                        cifar.load_cifar100, _cifar_hint("cifar-100-python.tar.gz", "cifar-100-python", cifar.CIFAR100_FILES)),
    "svhn": _Source(svhn.FILES, ("", "svhn"), svhn.load, "put " + " and ".join(svhn.FILES) + " into {dest}"),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return [*DATASETS, "imagefolder"]


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in list_datasets():
        raise ConfigError(f"unknown data set {name!r}: choose one of {', '.join(list_datasets())}")
    return key


def _locate(source: _Source, dirs: list[Path]) -> dict[str, Path] | None:
    """The first folder of ``dirs`` holding all of ``source``'s files, as {canonical name: path}."""
    for d in dirs:
        found = {}
        for f in source.files:
            path = next((d / v for v in source.variants(f) if (d / v).is_file()), None)
            if path is None:
                break
            found[f] = path
        else:
            return found
    return None


def _download_refusal(download: bool | None) -> str | None:
    """Why downloading is off, or None if it is allowed."""
    if download is None:
        if os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes"):
            return f"downloading is off ({NO_DOWNLOAD_ENV}={os.environ[NO_DOWNLOAD_ENV]})"
        return None
    return None if download else "downloading is off (download=False)"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool | None = None,
                 progress: bool = True, stream: bool = False) -> Data:
    """Load a data set by name, downloading it into ``data_dir/<name>/`` if it is not found.

    ``data_dir`` defaults to :func:`default_data_dir` (``imagefolder`` requires
    it). ``download=None`` downloads unless ``FASTROBUST_NO_DOWNLOAD=1``.
    ``mnist-subset`` ships with the package and ignores both. A ``package.module:factory``
    name calls the user's data factory (see :mod:`fastrobust.data.user`).

    ``stream=True``: each split is a :class:`~.stream.LazySplit`, whose images are read when needed
    (an image folder is not decoded up front; a user's Datasets are read item by item; the other
    data sets, small enough to be held, are wrapped as they are).
    """
    if stream:
        return streamed(_load(name, data_dir, download, progress, stream=True))
    return _load(name, data_dir, download, progress)


def streamed(data: Data) -> Data:
    """``data`` with each split a :class:`~.stream.LazySplit` (``--stream``: its images read when needed)."""
    return Data(data.info, *(None if s is None else lazy(s) for s in (data.train, data.test, data.val)), data.notes)


def _load(name, data_dir, download, progress, stream: bool = False) -> Data:
    if is_factory_ref(name):
        return user.load_factory(name, None if data_dir is None else str(data_dir), stream=stream)
    key = _canonical(name)
    if key == "imagefolder":
        if data_dir is None:
            raise ConfigError("the imagefolder data set needs its folder: pass --data-dir DIR, with DIR/train/<class>/ and DIR/test/<class>/")
        root = Path(data_dir).expanduser()
        return imagefolder.stream(root) if stream else imagefolder.load(root, progress)
    info = DATASETS[key]
    if key == "mnist-subset":
        paths = _locate(_SOURCES["mnist"], [EMBEDDED_DIR / key])
        if paths is None:
            raise DataError(f"the embedded mnist-subset files are missing from {EMBEDDED_DIR / key}: reinstall fastrobust")
        train, test, _ = idx.load(paths, info)
        return Data(info, train, test)

    source = _SOURCES[key]
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    searched = [root / d for d in source.dirs]
    paths = _locate(source, searched)
    if paths is None:
        dest = root / key
        problem = _download_refusal(download)
        if problem is None:
            try:
                downloader.fetch(key, dest, progress)
            except downloader.DownloadFailed as e:
                problem = f"the download failed ({e})"
            paths = _locate(source, searched)
        if paths is None:
            raise DataError(
                f"data set {key!r} was not found in {', '.join(map(str, searched))}; "
                f"{problem or f'the download into {dest} did not produce the expected files'}. "
                f"To fix: {source.hint.format(dest=dest)} (official copies: {downloader.BASE_URLS[key]}), "
                "or pass --data-dir DIR for a folder that holds them"
            )
    train, test, classes = source.read(paths, info)
    return Data(replace(info, classes=classes), train, test)
