"""--wa through the engine: validated next to the raw model, best.pt holds the selected weights, resume
is exact with the average, and fit takes it by name."""

import json

import pytest
import torch

import fastrobust
from fastrobust.config import TrainConfig
from fastrobust.engine import load_checkpoint, train
from fastrobust.errors import ConfigError

SMALL = dict(dataset="mnist-subset", train_subset=300, val_size=100, test_subset=100, batch_size=50,
             val_steps=3, test_steps=3, eps=0.3, method="pgd", method_params={"steps": 2}, epochs=3, seed=1)


def _train(tmp_path, name, **kw):
    return train(TrainConfig(**{**SMALL, "out": str(tmp_path / name), **kw}), progress=False, echo=lambda s: None)


def _records(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_wa_is_validated_selected_and_delivered(tmp_path):
    summary = _train(tmp_path, "wa", wa=0.9, wa_warmup=0)
    run = tmp_path / "wa"
    records = _records(run)
    assert all("val_wa_robust_acc" in r and "val_wa_clean_acc" in r for r in records)
    best = records[summary["best_epoch"] - 1]
    chosen = best["val_wa_robust_acc"] if summary["best_weights"] == "averaged" else best["val_robust_acc"]
    assert summary["val_robust_acc"] == chosen == max(best["val_robust_acc"], best["val_wa_robust_acc"])
    assert summary["wa"] == 0.9 and summary["passes_per_example"] == pytest.approx(9.0)   # no passes of its own
    best_pt, last_pt = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best_pt["weights"] == summary["best_weights"]
    if summary["best_epoch"] == 3:   # best.pt is this epoch's raw or averaged state
        source = last_pt["averager"]["state"] if summary["best_weights"] == "averaged" else last_pt["model"]
        assert all(torch.equal(best_pt["model"][k], source[k]) for k in source)
    model = fastrobust.load_model(run)
    assert all(torch.equal(model.state_dict()[k], best_pt["model"][k]) for k in best_pt["model"])


def test_averaged_weights_are_chosen_when_more_robust(tmp_path, monkeypatch):
    # validation rigged so that the averaged weights win in every epoch: best.pt must hold them
    from fastrobust.engine import trainer

    real = trainer._validate

    def rigged(run):
        val = real(run)
        return {**val, "wa_robust_acc": 1.0}

    monkeypatch.setattr(trainer, "_validate", rigged)
    summary = _train(tmp_path, "rig", wa=0.5, wa_warmup=0, epochs=1)
    assert summary["best_weights"] == "averaged" and summary["val_robust_acc"] == 1.0   # the averaged weights' figure
    best_pt, last_pt = load_checkpoint(tmp_path / "rig" / "best.pt"), load_checkpoint(tmp_path / "rig" / "last.pt")
    avg = last_pt["averager"]["state"]
    assert all(torch.equal(best_pt["model"][k], avg[k]) for k in avg)
    assert not all(torch.equal(last_pt["model"][k], avg[k]) for k in avg)


@pytest.mark.slow
def test_resume_with_wa_is_exact(tmp_path, monkeypatch):
    from test_engine import _kill_after_epoch_1_and_resume

    kw = dict(method="pgd", method_params={"steps": 2}, epochs=3, seed=1, wa=0.8)
    _kill_after_epoch_1_and_resume(tmp_path, monkeypatch, kw)   # same weights, metrics and test results
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a["averager"]["updates"] == b["averager"]["updates"]
    assert all(torch.equal(a["averager"]["state"][k], b["averager"]["state"][k]) for k in a["averager"]["state"])


def test_wa_values_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="wa .*between 0 and 1"):
        _train(tmp_path, "bad", wa=1.5)
    assert not (tmp_path / "bad").exists()


def test_label_smoothing_reaches_the_training_loss_only():
    from fastrobust.methods.losses import CE, cross_entropy
    from fastrobust.methods.base import MethodContext

    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    ctx = MethodContext(num_classes=4, input_std=torch.ones(1), epochs=1, batches_per_epoch=1, label_smoothing=0.4)
    part = CE().bind(ctx, {})
    loss, _, _ = part(lambda t: t, None, logits, y)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.4))
    assert not torch.allclose(loss, cross_entropy(logits, y))


@pytest.mark.slow
@pytest.mark.parametrize("method", [m.name for m in __import__("fastrobust.methods", fromlist=["x"]).list_methods()])
def test_every_method_trains_with_wa_and_label_smoothing(tmp_path, method):
    summary = train(TrainConfig(dataset="mnist-subset", train_subset=100, val_size=50, test_subset=50, batch_size=50,
                                val_steps=1, test_steps=1, epochs=1, method=method, wa=0.9, label_smoothing=0.3,
                                out=str(tmp_path / method)), progress=False, echo=lambda s: None)
    assert summary["wa"] == 0.9 and summary["best_weights"] in ("raw", "averaged")
    assert "averager" in load_checkpoint(tmp_path / method / "last.pt")
    config = (tmp_path / method / "config.yaml").read_text()
    assert "label_smoothing: 0.3" in config
