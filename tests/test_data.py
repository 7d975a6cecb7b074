"""Tests of fastrobust.data: the file formats, the embedded subset, splitting,
augmentation and the device loader (downloads: test_data_download.py)."""

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fastrobust.data import (
    DATASETS,
    Data,
    DeviceLoader,
    Split,
    augment,
    default_data_dir,
    list_datasets,
    load_dataset,
    split_validation,
    take_subset,
)
from fastrobust.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test here downloads or writes to the user's data folder."""
    monkeypatch.setenv("FASTROBUST_NO_DOWNLOAD", "1")
    monkeypatch.setenv("FASTROBUST_DATA", str(tmp_path / "default-data"))


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"the shared data copy {path} is not available")
    return path


# ---------------------------------------------------------------- IDX (MNIST)

def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written independently of the library's encoder."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def fake_mnist(n_train=300, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    return dict(zip(IDX_NAMES, (a.astype(np.uint8) for a in arrays)))


def write_mnist(folder: Path, arrays: dict, dotted=False, gz=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        data = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return folder


def assert_mnist_equal(data: Data, arrays: dict):
    np.testing.assert_array_equal(data.train.x[:, 0].numpy(), arrays[IDX_NAMES[0]])
    np.testing.assert_array_equal(data.train.y.numpy(), arrays[IDX_NAMES[1]])
    np.testing.assert_array_equal(data.test.x[:, 0].numpy(), arrays[IDX_NAMES[2]])
    np.testing.assert_array_equal(data.test.y.numpy(), arrays[IDX_NAMES[3]])


def test_registry():
    assert set(list_datasets()) >= {"mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder", "mnist-subset"}
    assert DATASETS["cifar10"].flip and not DATASETS["svhn"].flip and DATASETS["svhn"].crop_pad == 4
    assert DATASETS["fashion-mnist"].eps == 0.1 and DATASETS["mnist"].eps == 0.3
    assert default_data_dir().name == "default-data"
    with pytest.raises(ConfigError, match="unknown data set"):
        load_dataset("imagenet")


def test_mnist_real():
    data = load_dataset("mnist", shared("mnist").parent, download=False)
    assert data.train.x.shape == (60000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.x.dtype == torch.uint8 and data.train.y.dtype == torch.int64
    assert sorted(data.train.y.unique().tolist()) == list(range(10)) and data.info == DATASETS["mnist"]


@pytest.mark.parametrize("layout, dotted, gz", [("", True, True), ("mnist", False, False), ("mnist/raw", True, False),
                                                ("MNIST/raw", False, True)])
def test_mnist_name_variants(tmp_path, layout, dotted, gz):
    arrays = fake_mnist()
    write_mnist(tmp_path / layout, arrays, dotted=dotted, gz=gz)
    assert_mnist_equal(load_dataset("mnist", tmp_path), arrays)


def test_fashion_mnist_layout(tmp_path):
    arrays = fake_mnist()
    write_mnist(tmp_path / "FashionMNIST" / "raw", arrays)
    data = load_dataset("fashion_mnist", tmp_path)
    assert_mnist_equal(data, arrays)
    assert data.info.name == "fashion-mnist" and data.info.classes[0] == "T-shirt/top"


def test_mnist_subset():
    data = load_dataset("mnist-subset")
    assert len(data.train) == 6000 and len(data.test) == 1000
    assert data.train.x.shape[1:] == (1, 28, 28) and data.info.name == "mnist-subset"
    assert (data.train.y.bincount(minlength=10) == 600).all() and (data.test.y.bincount(minlength=10) == 100).all()


def corrupt(folder: Path, name: str, arrays: dict, data: bytes, gz: bool = True):
    write_mnist(folder, arrays)
    (folder / f"{name}.gz").unlink()
    (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("case, message", [
    ("truncated", "train-images-idx3-ubyte.gz is truncated"),
    ("truncated-plain", "train-images-idx3-ubyte is truncated"),
    ("bad-magic", "bad magic number"),
    ("wrong-ndim", "3 dimension"),
    ("label-range", "label 10 is outside"),
    ("count", "300 images but 299 labels"),
    ("bad-gzip", "truncated or corrupted"),
    ("cut-gzip", "truncated or corrupted"),
    ("wrong-size", "images are 27x28"),
])
def test_idx_errors(tmp_path, case, message):
    arrays = fake_mnist()
    images = idx_bytes(arrays[IDX_NAMES[0]])
    if case.startswith("truncated"):
        corrupt(tmp_path, IDX_NAMES[0], arrays, images[:-100], gz=case == "truncated")
    elif case == "bad-magic":
        corrupt(tmp_path, IDX_NAMES[0], arrays, b"\x12\x34" + images[2:])
    elif case == "wrong-ndim":
        corrupt(tmp_path, IDX_NAMES[0], arrays, idx_bytes(arrays[IDX_NAMES[0]].reshape(300, -1)))
    elif case == "label-range":
        corrupt(tmp_path, IDX_NAMES[1], arrays, idx_bytes(np.full(300, 10, np.uint8)))
    elif case == "count":
        corrupt(tmp_path, IDX_NAMES[1], arrays, idx_bytes(arrays[IDX_NAMES[1]][:299]))
    elif case == "wrong-size":
        corrupt(tmp_path, IDX_NAMES[0], arrays, idx_bytes(arrays[IDX_NAMES[0]][:, 1:]))
    else:
        write_mnist(tmp_path, arrays)
        path = tmp_path / f"{IDX_NAMES[0]}.gz"
        raw = bytearray(path.read_bytes())
        if case == "bad-gzip":
            raw[-6] ^= 0xFF  # damage the CRC
        path.write_bytes(bytes(raw) if case == "bad-gzip" else bytes(raw[:len(raw) // 2]))
    with pytest.raises(DataError, match=message) as err:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("download", [None, False])
def test_missing_files_message(tmp_path, download):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, download=download)
    message = str(err.value)
    assert "downloading is off" in message and str(tmp_path / "MNIST" / "raw") in message
    assert f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, " \
           f"t10k-labels-idx1-ubyte.gz (gzipped or not) into {tmp_path / 'mnist'}" in message
    assert "--data-dir" in message


# ------------------------------------------------------------------ CIFAR

def cifar_batch(n, num_classes, label_key, rng):
    return {b"batch_label": b"batch", label_key: rng.integers(0, num_classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def dump(path: Path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python 2 pickles (protocol 2, bytes keys)


def write_cifar10(folder: Path, n=20, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(n, 10, b"labels", rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n, 10, b"labels", rng)
    for name, batch in batches.items():
        dump(folder / name, batch)
    names = [c.encode() for c in DATASETS["cifar10"].classes]
    dump(folder / "batches.meta", {b"num_cases_per_batch": n, b"label_names": names, b"num_vis": 3072})
    return batches


def write_cifar100(folder: Path, n=30, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    splits = {"train": cifar_batch(n, 100, b"fine_labels", rng), "test": cifar_batch(n, 100, b"fine_labels", rng)}
    for name, split in splits.items():
        split[b"coarse_labels"] = [0] * n
        dump(folder / name, split)
    dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return splits


def test_cifar10_roundtrip(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the folder itself or its parent
        data = load_dataset("cifar10", data_dir)
        train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
        np.testing.assert_array_equal(data.train.x.numpy(), np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(data.train.y.numpy(), np.concatenate([b[b"labels"] for b in train]))
        np.testing.assert_array_equal(data.test.x.numpy().reshape(-1, 3072), batches["test_batch"][b"data"])
        assert data.test.y.tolist() == batches["test_batch"][b"labels"]
        assert data.info.classes == DATASETS["cifar10"].classes and data.train.x.is_contiguous()


def test_cifar100_roundtrip(tmp_path):
    splits = write_cifar100(tmp_path / "cifar-100-python")
    data = load_dataset("cifar100", tmp_path)
    np.testing.assert_array_equal(data.train.x.numpy().reshape(-1, 3072), splits["train"][b"data"])
    assert data.train.y.tolist() == splits["train"][b"fine_labels"] and data.test.y.tolist() == splits["test"][b"fine_labels"]
    assert data.info.classes[7] == "class7" and data.info.num_classes == 100


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a valid CIFAR pickle"),
    (lambda p: dump(p, {b"data": np.zeros((20, 1024), np.uint8), b"labels": [0] * 20}), r"shape \(N, 3072\)"),
    (lambda p: dump(p, {b"data": np.zeros((20, 3072), np.float32), b"labels": [0] * 20}), "float32"),
    (lambda p: dump(p, {b"data": np.zeros((20, 3072), np.uint8), b"labels": [10] * 20}), "label 10 is outside"),
    (lambda p: dump(p, {b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19}), "20 images but 19 labels"),
    (lambda p: dump(p, {b"data": np.zeros((20, 3072), np.uint8)}), "no 'labels' entry"),
    (lambda p: dump(p, {b"data": _Evil(), b"labels": [0]}), r"refusing to load __builtin__\.print"),
])
def test_cifar_errors(tmp_path, damage, message):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    damage(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match=message) as err:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in str(err.value)


# ------------------------------------------------------------------- SVHN

def write_svhn(folder: Path, n=40, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("train_32x32.mat", "test_32x32.mat"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0] = 10
        scipy.io.savemat(folder / name, {"X": x, "y": y})
        out[name] = (x, y)
    return out


def test_svhn_roundtrip(tmp_path):
    files = write_svhn(tmp_path / "svhn")
    data = load_dataset("svhn", tmp_path)
    x, y = files["train_32x32.mat"]
    assert data.train.y[0] == 0 and data.train.y.tolist() == (y[:, 0] % 10).tolist()
    assert data.test.x.shape == (40, 3, 32, 32)
    np.testing.assert_array_equal(data.train.x[5].numpy(), x[:, :, :, 5].transpose(2, 0, 1))


def test_svhn_errors(tmp_path):
    write_svhn(tmp_path)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 40), np.uint8), "y": np.ones((40, 1))})
    with pytest.raises(DataError, match=r"test_32x32.mat: 'X' must be .* \(32, 32, 3, N\)"):
        load_dataset("svhn", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="test_32x32.mat is not a readable MATLAB file"):
        load_dataset("svhn", tmp_path)


# ------------------------------------------------------------ image folder

def make_image_folder(root: Path, classes=("cat", "dog", "eel"), n=(4, 2), size=(12, 10), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), n):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / c / f"{i}.png")
    return root


def cache_files(root: Path) -> list[Path]:
    return sorted(root.glob(".fastrobust-cache-*"))


def test_imagefolder_load_and_cache(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs")
    data = load_dataset("imagefolder", root, progress=False)
    assert data.train.x.shape == (12, 3, 10, 12) and data.test.x.shape == (6, 3, 10, 12)
    assert data.info.classes == ("cat", "dog", "eel") and data.train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.info.crop_pad == 0 and not data.info.flip and data.info.channels == 3
    first = np.asarray(Image.open(root / "train" / "dog" / "1.png"))
    np.testing.assert_array_equal(data.train.x[5].permute(1, 2, 0).numpy(), first)
    expected_mean = data.train.x.double().div(255).mean(dim=(0, 2, 3))
    np.testing.assert_allclose(data.info.mean, expected_mean.numpy(), rtol=1e-9)
    assert [p.name for p in cache_files(root)] == [".fastrobust-cache-test.npz", ".fastrobust-cache-train.npz"]

    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the cache was not used"))
    again = load_dataset("imagefolder", root, progress=False)
    assert torch.equal(again.train.x, data.train.x) and again.info == data.info


def test_imagefolder_cache_invalidated(tmp_path):
    root = make_image_folder(tmp_path)
    load_dataset("imagefolder", root, progress=False)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "train" / "cat" / "9.png")
    assert len(load_dataset("imagefolder", root, progress=False).train) == 13


def test_imagefolder_grayscale_and_fallback_cache(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "gray", mode="L", size=(32, 32))
    (root / ".fastrobust-cache-train.npz").mkdir()  # the cache cannot be written next to the images
    data = load_dataset("imagefolder", root, progress=False)
    assert data.info.channels == 1 and data.info.crop_pad == 4 and data.info.flip
    assert len(list((default_data_dir() / "imagefolder-cache").glob("*/.fastrobust-cache-train.npz"))) == 1
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the fallback cache was not used"))
    assert torch.equal(load_dataset("imagefolder", root, progress=False).train.x, data.train.x)


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    root = make_image_folder(tmp_path, mode="L")
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(root / "test" / "cat" / "rgb.png")
    data = load_dataset("imagefolder", root, progress=False)
    assert data.train.x.shape[1] == 3 and data.test.x.shape[1] == 3
    assert torch.equal(data.train.x[:, 0], data.train.x[:, 2])


@pytest.mark.parametrize("case, message", [
    ("empty-class", r"class folder .*train/dog holds no"),
    ("corrupt", r"cannot decode image .*eel/1.png"),
    ("size", r"cat/3.png is 9x12 \(HxW\) but .*cat/0.png is 10x12"),
    ("test-size", r"test image .*cat/0.png is 9x12"),
    ("classes", r"missing in test: \['eel'\]"),
    ("no-test", r"test does not exist"),
])
def test_imagefolder_errors(tmp_path, case, message):
    root = make_image_folder(tmp_path)
    if case == "empty-class":
        for p in (root / "train" / "dog").iterdir():
            p.unlink()
    elif case == "corrupt":
        (root / "train" / "eel" / "1.png").write_bytes(b"\x89PNG broken")
    elif case == "size":
        Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(root / "train" / "cat" / "3.png")
    elif case == "test-size":
        for p in sorted((root / "test").rglob("*.png")):
            Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(p)
    elif case == "classes":
        for p in (root / "test" / "eel").iterdir():
            p.unlink()
        (root / "test" / "eel").rmdir()
    else:
        for p in sorted((root / "test").rglob("*.png")):
            p.unlink()
        for p in (root / "test").iterdir():
            p.rmdir()
        (root / "test").rmdir()
    with pytest.raises(DataError, match=message):
        load_dataset("imagefolder", root, progress=False)
    assert cache_files(root) == [] and not (default_data_dir() / "imagefolder-cache").exists()


def test_imagefolder_needs_data_dir():
    with pytest.raises(ConfigError, match="--data-dir"):
        load_dataset("imagefolder")


@pytest.mark.slow
def test_imagefolder_real_cifar10_jpeg(tmp_path):
    archive = shared("cifar10-jpeg") / "cifar10-jpeg.tar.gz"

    def wanted(name: str) -> bool:  # 20 training and 5 test images per class
        parts = name.split("/")
        return len(parts) == 3 and int(parts[2].split(".")[0]) < (20 if parts[0] == "train" else 5)

    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                tar.extract(member, tmp_path, filter="data")
    data = load_dataset("imagefolder", tmp_path, progress=False)
    assert data.train.x.shape == (200, 3, 32, 32) and data.test.x.shape == (50, 3, 32, 32)
    assert data.info.classes == DATASETS["cifar10"].classes and data.info.crop_pad == 4 and data.info.flip
    assert all(0.3 < m < 0.6 for m in data.info.mean) and all(0.15 < s < 0.35 for s in data.info.std)


# ---------------------------------------------------- splitting and subsets

def toy_split(n=100) -> Split:
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Split(x, torch.arange(n) % 10)


def test_split_validation():
    split = toy_split()
    train, val = split_validation(split, 20, seed=3)
    assert len(train) == 80 and len(val) == 20
    ids = lambda s: set(s.x[:, 0, 0, 0].tolist())
    assert ids(train).isdisjoint(ids(val)) and ids(train) | ids(val) == set(range(100))
    train2, val2 = split_validation(split, 20, seed=3)
    assert torch.equal(val.x, val2.x) and torch.equal(train.y, train2.y)
    assert not torch.equal(split_validation(split, 20, seed=4)[1].x, val.x)
    same, empty = split_validation(split, 0, seed=3)
    assert same is split and len(empty) == 0 and empty.x.shape[1:] == split.x.shape[1:]
    for bad in (100, 150, -1):
        with pytest.raises(ConfigError):
            split_validation(split, bad, seed=0)


def test_take_subset():
    split = toy_split()
    assert take_subset(split, None, 0) is split and take_subset(split, 100, 0) is split
    a, b = take_subset(split, 30, seed=1), take_subset(split, 30, seed=1)
    assert len(a) == 30 and torch.equal(a.x, b.x) and not torch.equal(a.x, take_subset(split, 30, seed=2).x)
    assert len(set(a.x[:, 0, 0, 0].tolist())) == 30
    with pytest.raises(ConfigError):
        take_subset(split, 0, 0)


def test_split_subset_and_to():
    split = toy_split()
    assert torch.equal(split.subset(torch.tensor([3, 1])).y, torch.tensor([3, 1]))
    assert len(split.subset(slice(10, 20))) == 10 and split.to("cpu").x.device.type == "cpu"


# ---------------------------------------------------------- augmentation

def test_augment_identity_and_properties():
    x = torch.rand(16, 3, 8, 8)
    assert augment(x, 0, False, None) is x
    out = augment(x, 2, True, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    again = augment(x, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_flip():
    x = torch.rand(64, 1, 5, 7)
    out = augment(x, 0, True, torch.Generator().manual_seed(1))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any() and kept.any()


def test_augment_crop_shifts():
    x = torch.rand(64, 2, 6, 6) * 0.5 + 0.5  # no zeros, so the padding shows
    pad = 2
    out = augment(x, pad, False, torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    shifts = []
    for i in range(64):  # each output is some window of the padded image
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert matches
        shifts.append(matches[0])
    assert len(set(shifts)) > 5 and (out == 0).any()


# ----------------------------------------------------------- device loader

def batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_covers_every_example_once():
    split = toy_split(103)
    loader = DeviceLoader(split, 10, shuffle=True, seed=5)
    got = batches(loader, 0)
    assert len(loader) == len(got) == 11 and got[-1][0].shape == (3, 1, 2, 2)
    x = torch.cat([b[0] for b in got])
    assert x.dtype == torch.float32 and x.max() <= 1
    ids = (x[:, 0, 0, 0] * 255).round().long()
    assert sorted(ids.tolist()) == list(range(103))
    assert torch.equal(torch.cat([b[1] for b in got]), ids % 10)
    assert len(DeviceLoader(split, 10, shuffle=True, drop_last=True)) == 10


def test_loader_epochs_are_reproducible():
    split = toy_split(64)
    make = lambda: DeviceLoader(split, 16, shuffle=True, seed=1, crop_pad=1, flip=True)
    a, b = make(), make()
    batches(a, 0), batches(a, 1)
    resumed, uninterrupted = batches(b, 2), batches(a, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(resumed, uninterrupted))
    assert not torch.equal(batches(a, 3)[0][1], uninterrupted[0][1])
    plain = DeviceLoader(split, 16, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in plain]), split.y)


@pytest.mark.parametrize("augmented", [False, True])
def test_loader_distributed_shards(augmented):
    split = toy_split(70)
    kw = {"shuffle": True, "seed": 7, "crop_pad": 1 if augmented else 0, "flip": augmented}
    single = batches(DeviceLoader(split, 16, **kw), 4)
    ranks = [batches(DeviceLoader(split, 16, rank=r, world_size=2, **kw), 4) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)
        assert abs(len(y0) - len(y1)) <= 1
    with pytest.raises(ConfigError, match="divisible"):
        DeviceLoader(split, 15, shuffle=True, world_size=2)
