"""Downloading the named data sets from their official locations.

Every file is fetched to a ``.part`` file, checked against its checksum and
only then moved into place; archives are unpacked into a temporary folder
and moved into place once complete, so an interrupted or failed download
never leaves a half-written file where the loaders look.

For tests, ``FASTROBUST_DOWNLOAD_MIRROR`` replaces every base URL and
:data:`CHECKSUMS` can be patched.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..errors import DataError

MIRROR_ENV = "FASTROBUST_DOWNLOAD_MIRROR"
TIMEOUT_S = 30

#: Official base URL of each data set's files.
BASE_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",
}

#: Files to fetch for each data set and their checksums (32 hex digits: MD5, 64: SHA-256).
#: ``.tar.gz`` files are unpacked after the download.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    },
}


class DownloadFailed(DataError):
    """The server could not be reached or did not deliver the file."""


def url_for(name: str, filename: str) -> str:
    """Where ``filename`` of data set ``name`` is fetched from (honouring the mirror override)."""
    base = os.environ.get(MIRROR_ENV) or BASE_URLS[name]
    return base.rstrip("/") + "/" + filename


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _algorithm(checksum: str) -> str:
    return {32: "md5", 64: "sha256"}[len(checksum)]


def fetch(name: str, dest: Path, progress: bool = True) -> None:
    """Download (and unpack) all files of data set ``name`` into ``dest``."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest} ({e}): pass --data-dir with a writable folder") from e
    for filename, checksum in CHECKSUMS[name].items():
        target = dest / filename
        if not (target.exists() and file_digest(target, _algorithm(checksum)) == checksum.lower()):
            _download(url_for(name, filename), target, checksum, progress)
        if filename.endswith(".tar.gz"):
            extract(target, dest)
            target.unlink()


def _download(url: str, target: Path, checksum: str, progress: bool) -> None:
    part = target.with_name(target.name + ".part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}", disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            raise DownloadFailed(f"{url}: {getattr(e, 'reason', None) or e}") from e
        algorithm = _algorithm(checksum)
        actual = file_digest(part, algorithm)
        if actual != checksum.lower():
            raise DataError(
                f"checksum mismatch for {target.name} downloaded from {url}: expected {algorithm} {checksum}, got {actual}. "
                f"The download was deleted; try again, or fetch the file yourself and put it in {target.parent}"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive into ``dest``, refusing members that would land outside it.

    The archive is unpacked into a temporary folder first; its top-level
    entries are moved into ``dest`` only when everything was extracted.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for m in members:
                    p = PurePosixPath(m.name)
                    if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: refusing to extract member {m.name!r} (absolute path, '..' or a link)")
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive} is truncated or corrupted ({e}): delete it and download it again") from e
        for entry in tmp.iterdir():
            final = dest / entry.name
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(entry, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
