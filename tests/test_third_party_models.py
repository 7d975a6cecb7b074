"""Models built the way torchvision and timm build theirs, end to end: fit, reload in a new process,
export and its snippet, ``fastrobust eval`` of a fit() run, and ``--model-opt num_classes``.

The always-on tests use :mod:`vision_standin` (a factory returning a class with positional constructor
arguments); the real torchvision / timm tests run where those packages import."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastrobust
from fastrobust.cli import main
from fastrobust.errors import ConfigError

import vision_standin
from test_reliability import assert_clean_error
from user_data import Pairs, separable

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(epochs=1, batch_size=40, val_size=40, val_steps=2, test_steps=2, eps=0.03, progress=False)
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _data(n=160, seed=0):
    x, y = separable(n, classes=3, seed=seed, shape=(3, 8, 8))
    return Pairs(x, y)


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
            "OMP_NUM_THREADS": "1"}


def fr(*args, cwd=None):
    """``fastrobust ARGS`` in a subprocess that imports the tests' modules: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "fastrobust", *map(str, args)], capture_output=True, text=True,
                       env=_env(), cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


def _logits_in_new_process(path, tmp_path) -> torch.Tensor:
    torch.save(X, tmp_path / "x.pt")
    script = (f"import torch, fastrobust; m = fastrobust.load_model({str(path)!r}); "
              f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})")
    done = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "y.pt")


@pytest.mark.slow
def test_factory_model_end_to_end(tmp_path):
    out = tmp_path / "run"
    lines = []
    torch.manual_seed(0)
    net = vision_standin.resnet18(num_classes=3)
    fastrobust.fit(net, _data(), test_data=_data(60, 1), method="pgd", out=str(out), echo=lines.append,
                   factory="vision_standin:resnet18", model_options={"num_classes": 3}, **COMMON)
    assert not any("will not rebuild" in l for l in lines)
    here = fastrobust.load_model(out)(X)
    assert torch.equal(_logits_in_new_process(out, tmp_path), here)
    # export, load the folder, and run the printed snippet
    rc, printed, err = fr("export", out, cwd=tmp_path)
    assert rc == 0, err
    assert torch.equal(fastrobust.load_model(out / "export")(X), here)
    snippet = printed.split("load it with plain torch + safetensors:\n\n", 1)[1].split("\n\nor with fastrobust")[0]
    assert "from vision_standin import resnet18" in snippet and "net = resnet18(num_classes=3)" in snippet
    torch.save(X, tmp_path / "x.pt")
    script = f"import torch\nx = torch.load({str(tmp_path / 'x.pt')!r})\n{snippet}\ntorch.save(logits, 'snip.pt')"
    done = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert torch.allclose(torch.load(tmp_path / "snip.pt"), here, atol=1e-5)
    # fastrobust eval of a fit() run: its data is not stored, so the test data is named
    rc, _, err = fr("eval", out)
    assert_clean_error(rc, err, "--dataset")
    rc, printed, err = fr("eval", out, "--dataset", "vision_standin:rgb_data", "--attacks", "clean,pgd5", cwd=tmp_path)
    assert rc == 0, err
    assert "60 images" in printed


def test_model_given_as_a_reference_is_built_with_the_datas_classes(tmp_path):
    summary = fastrobust.fit("vision_standin:create_model", _data(), out=str(tmp_path / "t"), echo=lambda s: None,
                             model_options={"model_name": "resnet18"}, method="natural", **COMMON)
    assert summary["model"] == "vision_standin:create_model"
    model = fastrobust.load_model(tmp_path / "t")
    assert isinstance(model.net, vision_standin.ResNet) and model(X).shape == (4, 3)


def test_a_model_that_cannot_be_rebuilt_is_said_once_and_loads_into_a_given_module(tmp_path):
    lines = []
    net = vision_standin.resnet18(num_classes=3).eval()
    fastrobust.fit(net, _data(), out=str(tmp_path / "c"), echo=lines.append, method="natural",
                   model_options={"num_classes": 3}, **COMMON)
    said = [l for l in lines if "will not rebuild" in l]
    assert len(said) == 1 and "ResNet" in said[0] and "factory=" in said[0], lines
    assert not net.training   # handed back in the mode it came in
    loaded = fastrobust.load_model(tmp_path / "c", model=vision_standin.resnet18(num_classes=3))
    assert torch.equal(loaded(X), net(X))


def test_model_errors_name_the_users_class(tmp_path):
    class TupleNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(192, 3)

        def forward(self, x):
            return self.fc(x.flatten(1)), x

    with pytest.raises(ConfigError, match="TupleNet.*returns tuple"):
        fastrobust.fit(TupleNet(), _data(), out=str(tmp_path / "x"), echo=lambda s: None, **COMMON)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_num_classes_as_a_model_option(tmp_path):
    base = ["train", "--method", "natural", "--epochs", "1", "--dataset", "mnist-subset", "--train-subset", "200",
            "--val-size", "50", "--test-subset", "50", "--val-steps", "2", "--test-steps", "2", "--no-progress"]
    assert main([*base, "--model-opt", "num_classes=10", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--model", "vision_standin:resnet18", "--model-opt", "num_classes=10",
                 "--model-opt", "in_chans=1", "--out", str(tmp_path / "b")]) == 0
    assert isinstance(fastrobust.load_model(tmp_path / "b").net, vision_standin.ResNet)
    rc, _, err = fr(*base, "--model-opt", "num_classes=5", "--out", tmp_path / "c")
    assert_clean_error(rc, err, "num_classes=5", "10")
    assert not (tmp_path / "c").exists()


def _real(module: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:   # e.g. a CUDA build of torchvision beside the CPU torch
        pytest.skip(f"{module} does not import here ({type(exc).__name__}: {str(exc)[:80]})")


@pytest.mark.parametrize("ref,options", [("torchvision.models:resnet18", {"num_classes": 3}),
                                         ("timm:create_model", {"model_name": "resnet18", "num_classes": 3})])
def test_real_torchvision_and_timm(tmp_path, ref, options):
    _real(ref.split(":")[0])
    out = tmp_path / "real"
    fastrobust.fit(ref, _data(), out=str(out), echo=lambda s: None, method="natural", model_options=options,
                   **{**COMMON, "batch_size": 80})
    here = fastrobust.load_model(out)(X)
    assert torch.equal(_logits_in_new_process(out, tmp_path), here)
