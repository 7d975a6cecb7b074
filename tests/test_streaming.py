"""Streaming data (--stream, fit(stream=True)): a DataLoader with workers gives the in-memory path's batches."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fastrobust
from fastrobust.config import TrainConfig
from fastrobust.data import DeviceLoader, Split, load_dataset
from fastrobust.data.stream import LazySplit, StreamLoader, lazy
from fastrobust.data.user import to_lazy_split
from fastrobust.engine import load_checkpoint, train
from fastrobust.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))
from test_fit import COMMON, PlainDataset, SmallNet  # noqa: E402

QUIET = dict(progress=False, echo=lambda s: None)


def _split(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 4)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_yields_the_device_loaders_batches_on_every_process(workers):
    split = _split()
    for world in (1, 2):
        for rank in range(world):
            kw = dict(shuffle=True, seed=5, crop_pad=2, flip=True, rank=rank, world_size=world)
            memory = DeviceLoader(split, 16, **kw)
            stream = StreamLoader(lazy(split), 16, workers=workers, **kw)
            assert len(memory) == len(stream) == 4
            for epoch in (0, 3):
                memory.set_epoch(epoch)
                stream.set_epoch(epoch)
                pairs = list(zip(memory, stream, strict=True))
                assert len(pairs) == 4
                for (xm, ym), (xs, ys) in pairs:
                    assert torch.equal(xm, xs) and torch.equal(ym, ys)
            memory.set_epoch(1)
            memory_0 = [x for x, _ in memory]
            assert not all(torch.equal(a, b) for a, b in zip(memory_0, [x for x, _ in stream]))  # another epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_with_index_both_loaders_give_each_examples_training_split_row(workers):
    """with_index=True: (x, y, index), index the rows of the split (as FGSM-PGI/PCO address their memory), the
    same from both loaders on every process; each row once per epoch over the processes; without it (x, y)."""
    split = _split()
    for world in (1, 2):
        rows = []
        for rank in range(world):
            kw = dict(shuffle=True, seed=5, rank=rank, world_size=world, with_index=True)
            memory = DeviceLoader(split, 16, **kw)
            stream = StreamLoader(lazy(split), 16, workers=workers, **kw)
            for loader in (memory, stream):
                loader.set_epoch(2)
            for (xm, ym, im), (xs, ys, is_) in zip(memory, stream, strict=True):
                assert im.dtype == is_.dtype == torch.int64 and torch.equal(im, is_)
                assert torch.equal(xm, split.x[im].float() / 255) and torch.equal(ym, split.y[im])
                assert torch.equal(xm, xs) and torch.equal(ym, ys)
                rows.append(im)
        assert sorted(torch.cat(rows).tolist()) == list(range(len(split)))
    assert all(len(batch) == 2 for batch in DeviceLoader(split, 16, shuffle=True))
    assert all(len(batch) == 2 for batch in StreamLoader(lazy(split), 16, shuffle=True, workers=0))


def test_stream_loader_leaves_the_training_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(StreamLoader(lazy(_split()), 16, shuffle=True, seed=1, crop_pad=1, workers=1))
    assert torch.equal(torch.rand(3), expected)


def test_lazy_split_reads_only_what_it_is_indexed_with():
    reads = []

    class Counting:
        shape = (3, 8, 8)

        def image(self, i):
            reads.append(i)
            return torch.full(self.shape, i, dtype=torch.uint8)

    s = LazySplit(Counting(), torch.arange(100) % 3)
    part = s.subset(torch.tensor([5, 7, 9])).subset(slice(1, 3))
    assert reads == [] and len(part) == 2 and part.y.tolist() == [7 % 3, 9 % 3]
    assert part.x[0:2][:, 0, 0, 0].tolist() == [7, 9] and reads == [7, 9]
    assert part.x.shape == (2, 3, 8, 8)


class _BadItem(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return (torch.zeros(1, 8, 8) if i != 33 else torch.zeros(1, 9, 8)), i % 2


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_item_found_while_streaming_is_a_one_line_error(workers):
    split = to_lazy_split(_BadItem(), "train_data")
    with pytest.raises(DataError) as info:
        list(StreamLoader(split, 8, shuffle=False, workers=workers))
    message = str(info.value)
    assert "\n" not in message and "image 33 has shape (1, 9, 8)" in message


def _write_folder(root: Path, n_per_class=24, classes=3, size=32):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_per_class), ("test", n_per_class // 3)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                a[:, c * 8:(c + 1) * 8] += 150
                Image.fromarray(a).save(d / f"{i:03d}.png")
    return root


def _weights(run):
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.slow
def test_a_generated_image_folder_streams_and_trains_as_the_in_memory_path(tmp_path):
    root = _write_folder(tmp_path / "folder")
    kw = dict(method="pgd", dataset="imagefolder", data_dir=str(root), model="preact-resnet18",
              model_options={"width": 4}, epochs=1, batch_size=16, val_size=12, val_steps=2, test_steps=2, eps=8 / 255)
    streamed = train(TrainConfig(**kw, stream=True, workers=2, out=str(tmp_path / "s")), **QUIET)
    assert not list(root.glob(".fastrobust-cache-*"))   # nothing decoded up front, nothing cached
    held = train(TrainConfig(**kw, out=str(tmp_path / "m")), **QUIET)
    assert streamed["passes_per_example"] == held["passes_per_example"] > 0
    # fewer images than the statistics sample: the same normalisation, hence the same training bit for bit
    a, b = _weights(tmp_path / "s"), _weights(tmp_path / "m")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert streamed["test_clean_acc"] == held["test_clean_acc"]
    assert streamed["test_robust_acc"] == held["test_robust_acc"]
    assert streamed["test_examples"] == held["test_examples"] == 24


def test_streamed_folder_facts_come_from_a_sample(tmp_path):
    root = _write_folder(tmp_path / "folder", n_per_class=4)
    streamed, held = load_dataset("imagefolder", root, stream=True), load_dataset("imagefolder", root)
    assert isinstance(streamed.train, LazySplit) and len(streamed.train) == len(held.train) == 12
    assert streamed.info == held.info
    assert torch.equal(streamed.train.x[0:12], held.train.x) and torch.equal(streamed.test.y, held.test.y)


def test_fit_streams_a_user_dataset_with_the_same_passes_and_accuracy(tmp_path):
    results, weights = {}, {}
    for stream in (False, True):
        torch.manual_seed(0)
        model = SmallNet()
        out = tmp_path / f"run-{stream}"
        results[stream] = fastrobust.fit(model, PlainDataset(160, 0), method="mdeat", test_data=PlainDataset(60, 1),
                                         out=out, stream=stream, workers=1, **COMMON, **QUIET)
        weights[stream] = _weights(out)
    assert results[True]["passes_per_example"] == results[False]["passes_per_example"] > 0
    assert abs(results[True]["test_clean_acc"] - results[False]["test_clean_acc"]) <= 0.05
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])
    assert yaml.safe_load((tmp_path / "run-True" / "config.yaml").read_text())["stream"] is True


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_streamed_run_resumes_exactly(tmp_path, monkeypatch):
    from fastrobust.engine import checkpoint as ckpt_mod

    kw = dict(method="pgd", dataset="mnist-subset", epochs=2, train_subset=200, val_size=50, test_subset=50,
              val_steps=2, test_steps=2, batch_size=50, stream=True, workers=1)
    train(TrainConfig(**kw, out=str(tmp_path / "full")), **QUIET)
    real_save = ckpt_mod.save_checkpoint

    def save_then_die(path, payload):
        real_save(path, payload)
        if path.name == "last.pt" and payload["epoch"] == 1:
            raise Killed()

    monkeypatch.setattr("fastrobust.engine.persist.save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(TrainConfig(**kw, out=str(tmp_path / "killed")), **QUIET)
    monkeypatch.setattr("fastrobust.engine.persist.save_checkpoint", real_save)
    train(TrainConfig(**kw, out=str(tmp_path / "killed")), resume=True, **QUIET)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_stream_options_on_the_command_line(tmp_path, capsys):
    from fastrobust.cli import main

    root = _write_folder(tmp_path / "folder", n_per_class=6)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--stream", "--workers", "1",
               "--method", "natural", "--epochs", "1", "--batch-size", "6", "--val-size", "3", "--model",
               "preact-resnet18", "--model-opt", "width=4", "--no-progress", "--out", str(out)])
    assert rc in (0, None)
    cfg = (out / "config.yaml").read_text()
    assert "stream: true" in cfg and "workers: 1" in cfg
    capsys.readouterr()
    assert main(["train", "--workers", "-1", "--stream", "--out", str(tmp_path / "bad")]) == 2
    assert "workers must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_torchrun_two_processes_stream_a_user_dataset(tmp_path):
    pytest.importorskip("torch.distributed")
    from test_distributed import output, torchrun

    root = Path(__file__).resolve().parents[1]
    common = ["--dataset", "user_data:make_data", "--model", "user_nets:make_net", "--method", "pgd", "--steps", "2",
              "--eps", "0.1", "--epochs", "1", "--val-size", "40", "--batch-size", "50", "--val-steps", "2",
              "--test-steps", "2", "--no-progress"]
    path = os.pathsep.join([str(root / "src"), str(root / "tests")])
    proc = torchrun(["-m", "fastrobust", "train", *common, "--stream", "--workers", "1", "--out", "two"], tmp_path,
                    PYTHONPATH=path)
    assert proc.returncode == 0, output(proc)[-4000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    one = train(TrainConfig(dataset="user_data:make_data", model="user_nets:make_net", method="pgd",
                            method_params={"steps": 2}, eps=0.1, epochs=1, val_size=40, batch_size=50, val_steps=2,
                            test_steps=2, out=str(tmp_path / "one")), **QUIET)
    assert two["world_size"] == 2 and two["test_examples"] == one["test_examples"] == 60
    assert two["passes_per_example"] == one["passes_per_example"] == 3.0
    assert abs(two["test_clean_acc"] - one["test_clean_acc"]) <= 0.1


@pytest.mark.slow
def test_eval_of_a_streamed_folder_run_decodes_no_training_image(tmp_path):
    from fastrobust.evaluation import evaluate_checkpoint

    root = _write_folder(tmp_path / "folder", n_per_class=6)
    run = tmp_path / "run"
    summary = train(TrainConfig(method="natural", dataset="imagefolder", data_dir=str(root), model="preact-resnet18",
                                model_options={"width": 4}, epochs=1, batch_size=6, val_size=3, stream=True, workers=0,
                                out=str(run)), **QUIET)
    result = evaluate_checkpoint(run, attacks="clean", device="cpu")
    assert not list(root.glob(".fastrobust-cache-*"))
    assert result["n"] == summary["test_examples"] == 6
    assert result["clean_accuracy"] == summary["test_clean_acc"]


class _RandomTransform(torch.utils.data.Dataset):
    """A Dataset that adds its own random noise (torch and numpy) to each image when read."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        noise = torch.rand(1, 4, 4) * 0.1 + float(np.random.rand()) * 0.1
        return (torch.full((1, 4, 4), 0.5) + noise).clamp(0, 1), i % 2


@pytest.mark.slow
def test_a_datasets_own_random_transforms_depend_on_seed_epoch_and_example_not_on_workers():
    split = to_lazy_split(_RandomTransform(), "train_data")

    def epoch(workers, e, rank=0, world=1):
        loader = StreamLoader(split, 8, shuffle=True, seed=2, workers=workers, rank=rank, world_size=world)
        loader.set_epoch(e)
        return torch.cat([x for x, _ in loader])

    torch.manual_seed(0)
    before = torch.rand(2)
    reference = epoch(0, 1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(2), before)   # reading in this process left its random stream alone
    assert torch.equal(epoch(2, 1), reference) and torch.equal(epoch(1, 1), reference)
    assert not torch.equal(epoch(0, 2), reference)
    shards = torch.cat([epoch(1, 1, rank, 2) for rank in range(2)])   # each example gets its own draw on any process
    assert sorted(shards.flatten().tolist()) == sorted(reference.flatten().tolist())
