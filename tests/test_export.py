"""``fastrobust export``: safetensors + config.json, loaded back by fastrobust and by plain torch."""

import json
import sys

import pytest
import torch

import fastrobust
from fastrobust.cli import main
from fastrobust.config import TrainConfig
from fastrobust.engine import train

pytest.importorskip("safetensors")
from safetensors.torch import load_file  # noqa: E402

import user_nets  # noqa: E402

TINY = dict(dataset="mnist-subset", train_subset=200, val_size=50, test_subset=50, batch_size=50,
            val_steps=2, test_steps=2, eps=0.3, epochs=1, method="pgd", method_params={"steps": 1})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    for name, model in (("factory", "user_nets:make_net"), ("builtin", "mnist-cnn")):
        options = {"hidden": 20} if name == "factory" else {}
        train(TrainConfig(**TINY, model=model, model_options=options, out=str(root / name)), progress=False,
              echo=lambda s: None)
    return root


def _x():
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", ["factory", "builtin"])
def test_round_trip_same_logits(runs, name, capsys):
    run = runs / name
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    printed = capsys.readouterr().out
    folder = run / "export"
    assert (folder / "model.safetensors").is_file() and "load_file(" in printed
    x = _x()
    expected = fastrobust.load_model(run / "best.pt")(x)
    assert torch.equal(fastrobust.load_model(folder)(x), expected)
    # the printed recipe, run as printed with plain torch + safetensors
    code = printed.split("load it with plain torch + safetensors:\n\n", 1)[1].split("\n\nor with fastrobust", 1)[0]
    scope = {"x": x}
    exec(code, scope)
    assert torch.allclose(scope["logits"], expected, atol=1e-6)


def test_config_json_fields(runs, capsys):
    run = runs / "factory"
    out = runs / "factory-export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["model"]["name"] == "user_nets:make_net" and config["model"]["options"] == {"hidden": 20}
    assert config["model"]["kwargs"] == {"num_classes": 10, "in_channels": 1, "image_size": [28, 28], "hidden": 20}
    assert config["input"]["shape"] == [1, 28, 28] and config["input"]["mean"] == [0.0]
    assert config["threat_model"] == "Linf" and config["eps"] == pytest.approx(0.3)
    acc = config["accuracy"]
    assert acc["source"] == "summary.json" and acc["clean_acc"] == summary["test_clean_acc"]
    assert acc["robust_acc"] == summary["test_robust_acc"]
    info = config["model_info"]
    assert info["dataset"] == "mnist-subset" and info["clean_acc"] == f"{100 * summary['test_clean_acc']:.2f}"
    assert info["autoattack_acc"] is None   # no AutoAttack evaluation yet
    # weights: the bare network's keys
    assert set(load_file(str(out / "model.safetensors"))) == set(user_nets.make_net(10, 1, (28, 28), 20).state_dict())


def test_accuracies_from_eval_json(runs, capsys):
    run = runs / "builtin"
    assert main(["eval", str(run), "--attacks", "clean,pgd5,apgd-ce", "--test-subset", "20", "--no-progress"]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert main(["export", str(run), "--out", str(runs / "b-export")]) == 0
    acc = json.loads((runs / "b-export" / "config.json").read_text())["accuracy"]
    assert acc["source"] == "eval.json" and acc["n"] == 20
    assert acc["clean_acc"] == evaluation["clean_accuracy"] and acc["robust_acc"] == evaluation["robust_accuracy"]
    assert "autoattack_acc" not in acc   # apgd-ce alone is not AutoAttack


def test_missing_safetensors_clear_error(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert main(["export", str(runs / "factory"), "--out", str(runs / "none")]) == 2
    assert 'pip install "fastrobust[export]"' in capsys.readouterr().err
    assert not (runs / "none").exists()


def test_bad_export_input(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_autoattack_accuracy_from_eval_json(runs, capsys):
    run = runs / "factory"
    assert main(["eval", str(run), "--attacks", "clean,aa", "--test-subset", "10", "--no-progress"]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert main(["export", str(run), "--out", str(runs / "aa-export")]) == 0
    config = json.loads((runs / "aa-export" / "config.json").read_text())
    assert config["accuracy"]["autoattack_acc"] == evaluation["attacks"]["aa"]["worst_case_accuracy"]
    assert config["model_info"]["autoattack_acc"] == f"{100 * evaluation['attacks']['aa']['worst_case_accuracy']:.2f}"
