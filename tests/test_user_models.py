"""A user's own model through ``--model package.module:factory``: training, reloading, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastrobust
from fastrobust.cli import main
from fastrobust.config import TrainConfig
from fastrobust.engine import load_checkpoint, train
from fastrobust.errors import ConfigError

import user_nets

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="mnist-subset", train_subset=200, val_size=50, test_subset=50, batch_size=50,
            val_steps=2, test_steps=2, eps=0.3, epochs=1, method="natural")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
            "OMP_NUM_THREADS": "1"}


def _quiet(cfg):
    return train(cfg, progress=False, echo=lambda s: None)


@pytest.mark.slow
def test_factory_model_trains_and_reloads_in_a_new_process(tmp_path):
    out = tmp_path / "run"
    code = main(["train", *f"--method pgd --steps 1 --dataset mnist-subset --train-subset 200 --val-size 50 "
                 f"--test-subset 50 --epochs 1 --val-steps 2 --test-steps 2 --no-progress".split(),
                 "--model", "user_nets:make_net", "--model-opt", "hidden=24", "--out", str(out)])
    assert code == 0
    spec = load_checkpoint(out / "best.pt")["model_spec"]
    assert spec["name"] == "user_nets:make_net" and spec["options"] == {"hidden": 24}
    assert spec["mean"] == [0.0] and spec["std"] == [1.0]   # a user's model takes [0, 1] pixels by default
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    here = fastrobust.load_model(out)(x)
    torch.save(x, tmp_path / "x.pt")
    script = (f"import torch, fastrobust; m = fastrobust.load_model({str(out)!r}); "
              f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, env=_env(), cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "y.pt"), here)
    # the weights into a module built by hand
    given = fastrobust.load_model(out, model=user_nets.make_net(10, 1, (28, 28), hidden=24))
    assert torch.equal(given(x), here)


def test_class_with_required_arguments_via_model_options(tmp_path):
    cfg = TrainConfig(**TINY, model="user_nets:ConvNet", model_options={"channels": 1}, out=str(tmp_path / "r"))
    summary = _quiet(cfg)
    assert summary["model"] == "user_nets:ConvNet"
    model = fastrobust.load_model(tmp_path / "r")
    assert isinstance(model.net, user_nets.ConvNet) and model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_normalize_wraps_the_model(tmp_path):
    cfg = TrainConfig(**TINY, model="user_nets:make_net", normalize="dataset", out=str(tmp_path / "d"))
    _quiet(cfg)
    spec = load_checkpoint(tmp_path / "d" / "best.pt")["model_spec"]
    assert spec["mean"] == pytest.approx([0.1307]) and spec["std"] == pytest.approx([0.3081])
    cfg = TrainConfig(**TINY, model="user_nets:make_net", normalize=[[0.5], [0.25]], out=str(tmp_path / "v"))
    _quiet(cfg)
    model = fastrobust.load_model(tmp_path / "v")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), model.net((x - 0.5) / 0.25))


@pytest.mark.parametrize("model,options,normalize,message", [
    ("no_such_pkg.nets:make", {}, None, "module 'no_such_pkg.nets' cannot be imported"),
    ("user_nets:missing", {}, None, "has no attribute 'missing'"),
    ("user_nets:not_a_module", {}, None, "not a torch.nn.Module"),
    ("user_nets:make_net", {"depth": 3}, None, "cannot be called with"),
    ("user_nets:wrong_output", {}, None, "returns (2, 7) for a batch of shape (2, 1, 28, 28)"),
    ("user_nets:make_net", {}, [[0.5, 0.5], [1, 1]], "need 1 value(s) each"),
])
def test_bad_model_refused_before_training(tmp_path, model, options, normalize, message):
    cfg = TrainConfig(**TINY, model=model, model_options=options, normalize=normalize, out=str(tmp_path / "bad"))
    with pytest.raises(ConfigError) as info:
        _quiet(cfg)
    assert message in str(info.value)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_cli_bad_factory_exit_2(tmp_path, capsys):
    code = main(["train", "--model", "nowhere_pkg:net", "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fastrobust: error: --model 'nowhere_pkg:net'") and "Traceback" not in err


@pytest.mark.slow
def test_unimportable_model_says_what_to_pass(tmp_path):
    cfg = TrainConfig(**TINY, model="user_nets:make_net", out=str(tmp_path / "r"))
    _quiet(cfg)
    script = f"import fastrobust; fastrobust.load_model({str(tmp_path / 'r')!r})"
    env = {**_env(), "PYTHONPATH": str(ROOT / "src")}   # user_nets not importable there
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "PYTHONPATH" in proc.stderr and "pass it: fastrobust.load_model(path, model=YourNet(...))" in proc.stderr


def test_models_command_explains_the_form(capsys):
    assert main(["models"]) == 0
    assert "--model package.module:factory" in capsys.readouterr().out
