"""A user's own data through ``--dataset package.module:factory``: conversion, training, errors."""

import json

import pytest
import torch

from fastrobust.cli import main
from fastrobust.config import TrainConfig
from fastrobust.data import load_dataset
from fastrobust.engine import train
from fastrobust.data.user import to_split
from fastrobust.errors import FastrobustError

import user_data


def test_dataset_factory_converts_exactly():
    data = load_dataset("user_data:make_data")
    xtr, ytr = user_data.separable(240, seed=0)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (240, 1, 8, 8)
    assert torch.equal(data.train.x.float() / 255, xtr) and torch.equal(data.train.y, ytr)
    assert len(data.test) == 60
    info = data.info
    assert (info.num_classes, info.channels, info.image_size, info.crop_pad, info.flip) == (3, 1, (8, 8), 0, False)
    assert info.mean[0] == pytest.approx(xtr.mean().item(), abs=1e-6)


@pytest.mark.parametrize("factory", ["user_data:pil_data", "user_data:tensor_pairs"])
def test_other_forms(factory):
    data = load_dataset(factory)
    assert data.train.x.dtype == torch.uint8 and len(data.train) in (90, 120)
    assert data.info.num_classes == 3


def test_facts_returned_by_the_factory():
    info = load_dataset("user_data:make_data_with_facts").info
    assert (info.num_classes, info.eps, info.crop_pad) == (4, 0.1, 1)


@pytest.mark.parametrize("factory,message", [
    ("user_data:wrong_shape", "test images are (1, 6, 8) (C, H, W) but training images are (1, 8, 8)"),
    ("user_data:label_out_of_range", "train label 2 is outside [0, 2)"),
    ("user_data:negative_label", "train label -1 is outside [0, 3)"),
    ("user_data:not_normalised", "images must be in [0, 1]"),
    ("user_data:one_dataset", "it must return (train, test)"),
    ("user_data:nothing_here", "has no attribute 'nothing_here'"),
])
def test_bad_data_refused(factory, message):
    with pytest.raises(FastrobustError) as info:
        load_dataset(factory)
    assert message in str(info.value)


def test_cli_trains_user_model_on_user_data(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "user_data:make_data", "--model", "user_nets:make_net", "--method", "pgd",
                 "--steps", "2", "--eps", "0.1", "--epochs", "2", "--val-size", "40", "--batch-size", "50",
                 "--val-steps", "2", "--test-steps", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "user_data:make_data" and summary["test_examples"] == 60
    assert summary["passes_per_example"] == pytest.approx(6.0)
    assert main(["eval", str(out), "--attacks", "clean", "--no-progress"]) == 0
    assert json.loads((out / "eval.json").read_text())["n"] == 60


def test_cli_bad_data_exit_2_before_any_file(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "user_data:wrong_shape", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "every image must have the same shape" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_datasets_command_explains_the_form(capsys):
    assert main(["datasets"]) == 0
    assert "--dataset package.module:factory" in capsys.readouterr().out


def test_floats_off_the_8bit_grid_are_rounded_with_a_warning():
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="stored as 8-bit pixels"):
        split = to_split((x, torch.arange(10) % 2), "data")
    assert (split.x.float() / 255 - x).abs().max() <= 0.5 / 255 + 1e-7


@pytest.mark.slow
def test_torchrun_two_processes_with_user_model_and_data(tmp_path):
    pytest.importorskip("torch.distributed")
    import os
    from pathlib import Path

    from test_distributed import output, torchrun

    root = Path(__file__).resolve().parents[1]
    args = ["-m", "fastrobust", "train", "--dataset", "user_data:make_data", "--model", "user_nets:make_net",
            "--method", "pgd", "--steps", "2", "--eps", "0.1", "--epochs", "1", "--val-size", "40", "--batch-size",
            "50", "--val-steps", "2", "--test-steps", "2", "--no-progress", "--out", "two"]
    path = os.pathsep.join([str(root / "src"), str(root / "tests")])
    proc = torchrun(args, tmp_path, PYTHONPATH=path)
    assert proc.returncode == 0, output(proc)[-4000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    one = train(TrainConfig(dataset="user_data:make_data", model="user_nets:make_net", method="pgd",
                            method_params={"steps": 2}, eps=0.1, epochs=1, val_size=40, batch_size=50, val_steps=2,
                            test_steps=2, out=str(tmp_path / "one")), progress=False, echo=lambda s: None)
    assert two["world_size"] == 2 and two["test_examples"] == one["test_examples"] == 60
    assert two["passes_per_example"] == one["passes_per_example"] == 3.0


class Keyed(torch.utils.data.Dataset):
    """A Dataset whose items are dicts (as many vision datasets and Hugging Face pipelines give them)."""

    def __init__(self, x, y, image="image", label="label", extra=None):
        self.x, self.y, self.image, self.label, self.extra = x, y, image, label, extra or {}

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {self.image: self.x[i], self.label: int(self.y[i]), **self.extra}


@pytest.mark.parametrize("image,label", [("image", "label"), ("pixel_values", "labels"), ("IMG", "Target")])
def test_dict_items_and_dict_batches_are_read_as_pairs(image, label):
    x, y = user_data.separable(50, seed=1)
    plain = to_split(user_data.Pairs(x, y), "train")
    keyed = Keyed(x, y, image, label, extra={"path": "a.png"})
    for data in (keyed, torch.utils.data.DataLoader(keyed, batch_size=16)):   # default collate: a dict of batches
        split = to_split(data, "train")
        assert torch.equal(split.x, plain.x) and torch.equal(split.y, plain.y)


@pytest.mark.parametrize("extra,message", [
    ({"img": 0}, "2 image keys ('image', 'img')"),
    ({"labels": 0}, "2 label keys ('label', 'labels')"),
])
def test_ambiguous_or_missing_dict_keys_are_refused_by_name(extra, message):
    x, y = user_data.separable(6)
    with pytest.raises(FastrobustError) as info:
        to_split(Keyed(x, y, extra=extra), "train")
    assert message in str(info.value) and "keep exactly one of each" in str(info.value)
    with pytest.raises(FastrobustError, match="no label key"):
        to_split(Keyed(x, y, label="annotation"), "train")
