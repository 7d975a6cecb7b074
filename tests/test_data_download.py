"""Tests of the downloads in fastrobust.data, against a local HTTP server (never the internet)."""

import functools
import gzip
import hashlib
import http.server
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from test_data import (
    IDX_NAMES,
    assert_mnist_equal,
    fake_mnist,
    write_cifar10,
    write_mnist,
)

from fastrobust.data import download, load_dataset
from fastrobust.errors import DataError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server for the folder it returns, set as the download mirror."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FASTROBUST_DOWNLOAD_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.delenv("FASTROBUST_NO_DOWNLOAD", raising=False)
    yield served
    server.shutdown()
    server.server_close()


def digest(path: Path, algorithm: str = "md5") -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def serve_mnist(served: Path, monkeypatch) -> dict:
    arrays = fake_mnist(n_train=50, n_test=20)
    write_mnist(served, arrays)
    monkeypatch.setitem(download.CHECKSUMS, "mnist", {f"{n}.gz": digest(served / f"{n}.gz") for n in IDX_NAMES})
    return arrays


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.suffix == ".part" or p.name.startswith(".extract-"))


def test_download_mnist(tmp_path, mirror, monkeypatch):
    arrays = serve_mnist(mirror, monkeypatch)
    data = load_dataset("mnist", tmp_path / "data", progress=False)
    assert_mnist_equal(data, arrays)
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    (mirror / f"{IDX_NAMES[0]}.gz").unlink()  # found locally now: no second download
    assert_mnist_equal(load_dataset("mnist", tmp_path / "data", progress=False), arrays)


def test_download_cifar10_archive_sha256(tmp_path, mirror, monkeypatch):
    batches = write_cifar10(tmp_path / "src" / "cifar-10-batches-py", n=8)
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", {archive.name: digest(archive, "sha256")})
    data = load_dataset("cifar10", tmp_path / "data", download=True, progress=False)
    np.testing.assert_array_equal(data.test.x.numpy().reshape(-1, 3072), batches["test_batch"][b"data"])
    dest = tmp_path / "data" / "cifar10"
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]


def test_download_wrong_checksum(tmp_path, mirror, monkeypatch):
    serve_mnist(mirror, monkeypatch)
    actual = download.CHECKSUMS["mnist"]["t10k-images-idx3-ubyte.gz"]
    monkeypatch.setitem(download.CHECKSUMS["mnist"], "t10k-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path / "data", progress=False)
    assert "checksum mismatch for t10k-images-idx3-ubyte.gz" in str(err.value)
    assert f"expected md5 {'0' * 32}, got {actual}" in str(err.value)
    assert not (tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path / "data") == []


def test_download_unreachable(tmp_path, monkeypatch):
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FASTROBUST_DOWNLOAD_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("FASTROBUST_NO_DOWNLOAD", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("svhn", tmp_path / "data", progress=False)
    message = str(err.value)
    assert f"was not found in {tmp_path / 'data'}, {tmp_path / 'data' / 'svhn'}" in message
    assert "the download failed" in message and f"127.0.0.1:{port}/train_32x32.mat" in message
    assert f"put train_32x32.mat and test_32x32.mat into {tmp_path / 'data' / 'svhn'}" in message
    assert leftovers(tmp_path / "data") == []


def test_download_disabled_by_env(tmp_path, mirror, monkeypatch):
    serve_mnist(mirror, monkeypatch)
    monkeypatch.setenv("FASTROBUST_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="FASTROBUST_NO_DOWNLOAD=1"):
        load_dataset("mnist", tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()


def test_extract_refuses_escaping_members(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="../escaped")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match="refusing to extract member '../escaped'"):
        download.extract(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escaped").exists()


def test_extract_corrupted_archive(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(gzip.compress(b"not a tar archive" * 100)[:-20])
    with pytest.raises(DataError, match="broken.tar.gz is truncated or corrupted"):
        download.extract(archive, tmp_path)
    assert leftovers(tmp_path) == []
