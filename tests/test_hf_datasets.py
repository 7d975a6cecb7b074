"""Hugging Face ``datasets`` as data: a ``datasets.Dataset`` given to ``fit`` (image and label columns found
from its features) and a ``--dataset`` factory returning a ``DatasetDict``. Built locally, no download."""

import json

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets", reason="the Hugging Face `datasets` package is not installed "
                                                  "(pip install datasets, or the `test` extra)")
from PIL import Image  # noqa: E402

import fastrobust  # noqa: E402
from fastrobust.cli import main  # noqa: E402
from fastrobust.data import load_dataset  # noqa: E402
from fastrobust.data.user import hf_columns, to_lazy_split, to_split  # noqa: E402
from fastrobust.errors import DataError  # noqa: E402

from helpers import TinyNet  # noqa: E402
from user_data import separable  # noqa: E402

NAMES = ["circle", "square", "star"]


def _uint8(n, seed, shape=(1, 8, 8)):
    x, y = separable(n, seed=seed, shape=shape)
    return (x * 255).round().to(torch.uint8), y


def image_dataset(n=90, seed=0):
    """An ``Image`` column of PIL images (stored as PNG) and a ``ClassLabel`` column, as the Hub's data sets."""
    x, y = _uint8(n, seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(a[0].numpy(), "L") for a in x],
                                       "label": y.tolist()}, features=features), x, y


def array_dataset(n=60, seed=0, **extra):
    """Images as nested lists of uint8 (H, W, C), labels as plain integers (no ClassLabel)."""
    x, y = _uint8(n, seed, shape=(3, 8, 8))
    columns = {"pixels": [a.permute(1, 2, 0).numpy() for a in x], "target": y.tolist(), **extra}
    return datasets.Dataset.from_dict(columns), x, y


def dataset_dict(data_dir=None):
    """A ``--dataset`` factory returning a DatasetDict (train and test splits)."""
    return datasets.DatasetDict({"train": image_dataset(120, 0)[0], "test": image_dataset(45, 1)[0]})


def train_validation_only():
    """Splits named as many Hub data sets without a labelled test split: train and validation."""
    return datasets.DatasetDict({"train": image_dataset(120, 0)[0], "validation": image_dataset(30, 1)[0]})


def test_columns_found_from_the_features_and_pixels_exact():
    ds, x, y = image_dataset()
    assert hf_columns(ds, "ds") == ("image", "label")
    split = to_split(ds, "ds")
    assert torch.equal(split.x, x) and torch.equal(split.y, y)
    assert split.meta["classes"] == tuple(NAMES)
    ds2, x2, y2 = array_dataset()
    assert hf_columns(ds2, "ds") == ("pixels", "target")
    split2 = to_split(ds2, "ds")
    assert torch.equal(split2.x, x2) and torch.equal(split2.y, y2)   # (H, W, C) lists -> (C, H, W)


def test_float_pixels_and_non_finite_ones():
    x, y = separable(30, seed=0)
    ds = datasets.Dataset.from_dict({"img": [a[0].numpy() for a in x], "label": y.tolist()})
    assert torch.equal(to_split(ds, "ds").x, (x * 255).round().to(torch.uint8))
    bad = [a[0].numpy().copy() for a in x]
    bad[7][2, 3] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        to_split(datasets.Dataset.from_dict({"img": bad, "label": y.tolist()}), "ds")


@pytest.mark.parametrize("extra, problem", [
    ({"other_label": [0] * 60}, "2 possible label columns ('target', 'other_label')"),
    ({"mask": [np.zeros((8, 8, 3), np.uint8)] * 60}, "2 possible image columns ('pixels', 'mask')"),
])
def test_ambiguous_columns_say_how_to_pick(extra, problem):
    ds = array_dataset(**extra)[0]
    with pytest.raises(DataError) as err:
        to_split(ds, "fit: train_data")
    message = str(err.value)
    assert problem in message and "ds.select_columns([" in message and "\n" not in message
    # picking the columns as the message says works
    assert len(to_split(ds.select_columns(["pixels", "target"]), "ds")) == 60


def test_no_label_column():
    ds = datasets.Dataset.from_dict({"pixels": [np.zeros((8, 8), np.uint8)] * 4, "name": ["a", "b", "c", "d"]})
    with pytest.raises(DataError, match="no label column"):
        to_split(ds, "ds")


def test_a_classlabel_wins_over_other_integer_columns():
    ds, _, y = image_dataset(30)
    ds = ds.add_column("index", list(range(30)))
    assert hf_columns(ds, "ds") == ("image", "label")


def test_fit_trains_on_a_hugging_face_dataset(tmp_path):
    train, _, _ = image_dataset(150, 0)
    test, _, _ = image_dataset(45, 1)
    summary = fastrobust.fit(TinyNet(64, 3), train, test_data=test, epochs=2, eps=0.05, lr=0.01, val_size=30,
                             out=str(tmp_path / "run"), progress=False, echo=lambda line: None)
    assert summary["train_examples"] == 120 and summary["val_examples"] == 30 and summary["test_examples"] == 45
    assert summary["learned"] is True, summary["not_learned"]


def test_factory_returning_a_dataset_dict(tmp_path):
    data = load_dataset("test_hf_datasets:dataset_dict")
    assert (len(data.train), len(data.test), data.info.num_classes) == (120, 45, 3)
    assert data.info.classes == tuple(NAMES)   # from the ClassLabel feature
    out = tmp_path / "run"
    assert main(["train", "--dataset", "test_hf_datasets:dataset_dict", "--model", "helpers:TinyNet",
                 "--model-opt", "in_features=64", "--epochs", "1", "--val-size", "20", "--eps", "0.05",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_examples"] == 45 and summary["train_examples"] == 100


def test_train_and_validation_splits_only():
    data = load_dataset("test_hf_datasets:train_validation_only")
    assert (len(data.train), len(data.test), data.val) == (120, 30, None)
    assert any("no 'test' split" in note for note in data.notes)


def test_streamed_hugging_face_dataset():
    ds, x, y = image_dataset(40)
    split = to_lazy_split(ds, "ds")
    assert torch.equal(split.y, y) and torch.equal(split.x[torch.arange(40)], x)
    assert split.meta["classes"] == tuple(NAMES)


def test_a_dataloader_over_a_hugging_face_dataset():
    ds, x, y = image_dataset(50)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, drop_last=True)
    split = to_split(loader, "ds")
    assert torch.equal(split.x, x) and torch.equal(split.y, y)


def test_a_transform_of_the_user_is_kept():
    ds, x, y = image_dataset(20)

    def invert(batch):   # e.g. a torchvision transform: PIL images in, float tensors (C, H, W) out
        return {"image": [1 - torch.from_numpy(np.asarray(im, dtype=np.float32))[None] / 255 for im in batch["image"]],
                "label": batch["label"]}

    split = to_split(ds.with_transform(invert), "ds")
    assert torch.equal(split.x, 255 - x) and torch.equal(split.y, y)
    lazy = to_lazy_split(ds.with_transform(invert), "ds")
    assert torch.equal(lazy.y, y) and torch.equal(lazy.x[torch.arange(20)], 255 - x)
