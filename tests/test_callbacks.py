"""Watching a run: Python callbacks and ``--log tensorboard``."""

import json
import sys

import pytest

import fastrobust
from fastrobust.cli import main
from fastrobust.config import TrainConfig
from fastrobust.errors import ConfigError

TINY = dict(dataset="mnist-subset", train_subset=200, val_size=50, test_subset=50, batch_size=50,
            val_steps=2, test_steps=2, eps=0.3, epochs=2, method="natural")
FLAGS = ("--method natural --train-subset 200 --val-size 50 --test-subset 50 --batch-size 50 --val-steps 2 "
         "--test-steps 2 --epochs 2 --no-progress").split()


class Recorder:
    def __init__(self):
        self.events = []

    def on_epoch_end(self, record):
        self.events.append(("epoch", record))

    def on_checkpoint(self, path):
        assert path.is_file()   # called once the file is in place
        self.events.append(("checkpoint", path.name))

    def on_train_end(self, summary):
        self.events.append(("end", summary))


def _metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_callbacks_see_records_checkpoints_and_summary(tmp_path):
    rec = Recorder()
    summary = fastrobust.train(TrainConfig(**TINY, out=str(tmp_path / "r")), progress=False, echo=lambda s: None,
                               callbacks=[rec])
    records = [e[1] for e in rec.events if e[0] == "epoch"]
    assert records == _metrics(tmp_path / "r")
    kinds = [e[0] if e[0] != "checkpoint" else e[1] for e in rec.events]
    # each epoch: the record, then best.pt when it improved, then last.pt; the summary at the end
    assert kinds[0] == "epoch" and kinds.count("last.pt") == 2 and kinds[-1] == "end"
    assert kinds.index("last.pt") > kinds.index("epoch") and "best.pt" in kinds
    assert rec.events[-1][1] == summary


def test_bad_callback_refused(tmp_path):
    with pytest.raises(ConfigError, match="has none of the methods"):
        fastrobust.train(TrainConfig(**TINY, out=str(tmp_path / "r")), progress=False, echo=lambda s: None,
                         callbacks=[object()])
    assert not (tmp_path / "r").exists()


def test_tensorboard_event_file_holds_each_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["train", *FLAGS, "--log", "tensorboard", "--out", str(out)]) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    records = _metrics(out)
    for key in ("train_loss", "train_acc", "val_clean_acc", "val_robust_acc", "passes", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6, abs=1e-7)


def test_tensorboard_missing_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "none"
    assert main(["train", *FLAGS, "--log", "tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "fastrobust[tensorboard]"' in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_logger(tmp_path, capsys):
    assert main(["train", *FLAGS, "--log", "wandb", "--out", str(tmp_path / "x")]) == 2
    assert "unknown logger" in capsys.readouterr().err
