"""Data that cannot train a classifier is refused before training (one class, NaN or infinite pixels), data
is not lost silently (a DataLoader's drop_last or unseeded shuffle, a validation split that takes much of
the training data), a factory may return a mapping of splits, and a run whose model ends at chance level
says so (summary.json ``learned: false``) instead of "done"."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import fastrobust
from fastrobust.cli import main
from fastrobust.config import TrainConfig, resolve
from fastrobust.data import load_dataset
from fastrobust.data.core import chance_accuracy, learning_verdict, validation_share_note
from fastrobust.data.user import to_lazy_split, to_split
from fastrobust.errors import DataError
from fastrobust.methods import get_method

from helpers import TinyNet
from user_data import Pairs, separable

QUIET = dict(progress=False, echo=lambda line: None)


# ---- degenerate data ---------------------------------------------------------------------------------

def test_nan_pixel_given_to_fit_is_refused_before_training(tmp_path):
    x, y = separable(120)
    x[17, 0, 3, 4] = float("nan")
    with pytest.raises(DataError) as err:
        fastrobust.fit(TinyNet(64), (x, y), epochs=1, out=str(tmp_path / "run"), **QUIET)
    message = str(err.value)
    assert "NaN or infinite" in message and "image 17" in message and "nan_to_num" in message
    assert "\n" not in message and not (tmp_path / "run").exists()


def test_infinite_pixel_in_a_dataset_of_numpy_images():
    x, y = separable(30)
    images = [a[0].numpy().astype(np.float64) for a in x]
    images[4][1, 1] = np.inf
    with pytest.raises(DataError, match=r"image 4.*NaN or infinite"):
        to_split([(img, int(label)) for img, label in zip(images, y)], "fit: train_data")


def test_non_finite_pixels_in_a_dataloader_name_the_batch():
    x, y = separable(64)
    x[40] = float("-inf")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    with pytest.raises(DataError, match=r"\(batch 2\): 64 pixel value\(s\) are NaN or infinite \(first in image 8\)"):
        to_split(loader, "fit: train_data")


def nan_factory(data_dir=None):
    x, y = separable(60)
    x[0, 0, 0, 0] = float("nan")
    return (x, y), separable(30, seed=1)


def one_class_test_factory():
    x, y = separable(30, seed=1)
    return separable(60), (x, torch.zeros_like(y))


def test_dataset_factory_with_nan_or_one_test_class_is_refused(tmp_path, capsys):
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset("test_data_checks:nan_factory")
    with pytest.raises(DataError, match="the test data holds only class 0"):
        load_dataset("test_data_checks:one_class_test_factory")
    assert main(["train", "--dataset", "test_data_checks:nan_factory", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite" in err[0]
    assert not (tmp_path / "run" / "best.pt").exists()


def test_one_class_in_the_training_data_is_refused(tmp_path):
    x, y = separable(90)
    with pytest.raises(DataError, match=r"the training data holds only class 2 \(90 images\).*at least 2 classes"):
        fastrobust.fit(TinyNet(64), (x, torch.full_like(y, 2)), num_classes=3, epochs=1,
                       out=str(tmp_path / "run"), **QUIET)
    xt, yt = separable(30, seed=1)
    with pytest.raises(DataError, match="the test data holds only class 0"):
        fastrobust.fit(TinyNet(64), (x, y), test_data=(xt, torch.zeros_like(yt)), epochs=1,
                       out=str(tmp_path / "run"), **QUIET)
    assert not (tmp_path / "run").exists()


def _image_folder(root, classes, n=4):
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 40 * c + i, np.uint8), "L").save(folder / f"{i}.png")


def test_image_folder_with_one_class_is_refused(tmp_path, capsys):
    _image_folder(tmp_path / "data", ["cats"])
    with pytest.raises(DataError, match="one class folder \\('cats'\\)"):
        load_dataset("imagefolder", tmp_path / "data")
    with pytest.raises(DataError, match="one class folder"):
        load_dataset("imagefolder", tmp_path / "data", stream=True)
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a classifier needs at least 2 classes" in err[0]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_test_subset_of_one_class_is_refused(tmp_path):
    x, y = separable(90)
    xt, yt = separable(30, seed=1)
    order = torch.argsort(yt, stable=True)   # the first 10 test images are all of class 0
    with pytest.raises(DataError, match=r"test examples \(after --test-subset\) holds only class"):
        fastrobust.fit(TinyNet(64), (x, y), test_data=(xt[order], yt[order]), epochs=1, test_subset=1,
                       val_size=10, out=str(tmp_path / "run"), **QUIET)


# ---- no silent data loss -----------------------------------------------------------------------------

def test_validation_share_note():
    assert validation_share_note(2000, 1000).startswith("the validation split takes 1000 of the 2000 training "
                                                        "examples (50%)")
    assert validation_share_note(60000, 1000) is None and validation_share_note(5000, 1000) is None
    assert validation_share_note(4999, 1000) is not None


def test_a_large_validation_share_is_warned_once_and_recorded(tmp_path):
    x, y = separable(200)
    lines = []
    summary = fastrobust.fit(TinyNet(64), (x, y), epochs=1, val_size=100, eps=0.05, out=str(tmp_path / "run"),
                             progress=False, echo=lines.append)
    warned = [line for line in lines if "the validation split takes 100 of the 200" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ")
    assert (summary["train_examples"], summary["val_examples"]) == (100, 100)
    assert any("takes 100 of the 200" in w for w in summary["data_warnings"])
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["data_warnings"] == summary["data_warnings"]
    assert (tmp_path / "run" / "train.log").read_text().count("the validation split takes") == 1
    quiet = fastrobust.fit(TinyNet(64), (x, y), epochs=1, val_size=40, eps=0.05, out=str(tmp_path / "run2"), **QUIET)
    assert quiet["data_warnings"] == []


def test_a_shuffling_dropping_dataloader_loses_nothing_and_splits_the_same_way():
    x, y = separable(600)
    dataset = Pairs(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, drop_last=True)
    first, second = to_split(loader, "fit: train_data"), to_split(loader, "fit: train_data")
    assert len(first) == 600   # not 512
    assert torch.equal(first.x, second.x) and torch.equal(first.y, y)   # the dataset's order, every time
    assert torch.equal(first.x, to_split(dataset, "d").x)
    notes = first.meta["notes"]
    assert len(notes) == 1 and "drop_last=True, which drops the last 88 of the 600 images" in notes[0]
    lazy = to_lazy_split(loader, "fit: train_data")
    assert len(lazy) == 600 and "drop_last=True" in lazy.meta["notes"][0]


def test_a_dataloader_with_its_own_unseeded_sampler_is_warned_about():
    x, y = separable(100)
    sampler = torch.utils.data.SubsetRandomSampler(range(90))
    loader = torch.utils.data.DataLoader(Pairs(x, y), batch_size=32, sampler=sampler, drop_last=True)
    split = to_split(loader, "fit: train_data")
    assert len(split) == 64   # read as given: its sampler chooses the images
    notes = " ".join(split.meta["notes"])
    assert "26 of the 90 images it draws are dropped" in notes
    assert "SubsetRandomSampler draws without a seeded generator" in notes
    seeded = torch.utils.data.DataLoader(Pairs(x, y), batch_size=30, sampler=torch.utils.data.SubsetRandomSampler(
        range(90), generator=torch.Generator().manual_seed(0)))
    assert "notes" not in to_split(seeded, "fit: train_data").meta


def test_fit_records_the_dataloader_warning(tmp_path):
    x, y = separable(330)
    loader = torch.utils.data.DataLoader(Pairs(x, y), batch_size=64, shuffle=True, drop_last=True)
    summary = fastrobust.fit(TinyNet(64), loader, epochs=1, val_size=30, eps=0.05, out=str(tmp_path / "run"), **QUIET)
    assert summary["train_examples"] == 300
    assert [w for w in summary["data_warnings"] if "drop_last" in w]


# ---- a mapping of splits from a factory --------------------------------------------------------------

def splits_mapping():
    return {"train": separable(90), "test": separable(30, seed=1), "validation": separable(24, seed=2),
            "facts": {"classes": ["a", "b", "c"]}}


def no_train_split():
    return {"training": separable(90), "test": separable(30, seed=1)}


def test_factory_returning_a_mapping_of_splits(tmp_path):
    data = load_dataset("test_data_checks:splits_mapping")
    assert (len(data.train), len(data.test), len(data.val)) == (90, 30, 24)
    assert data.info.classes == ("a", "b", "c")
    with pytest.raises(DataError, match="without a 'train' split.*'training'"):
        load_dataset("test_data_checks:no_train_split")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "test_data_checks:splits_mapping", "--model", "helpers:TinyNet",
                 "--model-opt", "in_features=64", "--epochs", "1", "--eps", "0.05", "--out", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["train_examples"], summary["val_examples"], summary["test_examples"]) == (90, 24, 30)


# ---- a run that learnt nothing -----------------------------------------------------------------------

def test_learning_verdict():
    y = torch.arange(1000) % 10
    assert chance_accuracy(y, 10) == pytest.approx(0.1)
    assert "at chance level (10.00%, 1 in 10)" in learning_verdict(0.097, y, 10, "clean test accuracy")
    assert learning_verdict(0.115, y, 10, "x") is not None   # within 2 points of chance
    assert learning_verdict(0.13, y, 10, "x") is None and learning_verdict(None, y, 10, "x") is None
    assert learning_verdict(0.155, y[:100], 10, "x") is not None   # 100 examples: two standard errors, 6 points
    skewed = torch.tensor([0] * 90 + [1] * 10)   # always predicting class 0 scores 90%
    assert "most frequent class" in learning_verdict(0.9, skewed, 2, "x")
    assert learning_verdict(0.99, skewed, 2, "x") is None


def test_a_run_at_chance_level_says_so(tmp_path):
    x, y = separable(200)
    xt, yt = separable(60, seed=1)
    lines = []
    summary = fastrobust.fit(TinyNet(64), (x, y), test_data=(xt, yt), epochs=1, lr=1e-7, eps=0.05, val_size=40,
                             out=str(tmp_path / "run"), progress=False, echo=lines.append)
    assert summary["learned"] is False and "clean test accuracy" in summary["not_learned"]
    assert lines[-1].startswith("warning: the model did not learn: clean test accuracy") and "done" not in lines[-1]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["learned"] is False
    learned = fastrobust.fit(TinyNet(64), (x, y), test_data=(xt, yt), epochs=3, lr=0.01, eps=0.05, val_size=40,
                             out=str(tmp_path / "run2"), progress=False, echo=lines.append)
    assert learned["learned"] is True and learned["not_learned"] is None and lines[-1].startswith("done: ")


def test_without_test_data_the_validation_accuracy_is_judged(tmp_path):
    x, y = separable(200)
    summary = fastrobust.fit(TinyNet(64), (x, y), epochs=1, lr=1e-7, eps=0.05, val_size=40,
                             out=str(tmp_path / "run"), **QUIET)
    assert summary["learned"] is False and "clean validation accuracy" in summary["not_learned"]
