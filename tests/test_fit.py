"""``fastrobust.fit``: a model class defined here (not in the registry) and a plain Dataset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fastrobust
from fastrobust.errors import ConfigError, FastrobustError

ROOT = Path(__file__).resolve().parents[1]


class SmallNet(nn.Module):
    """A tiny conv net for 1x8x8 images and 3 classes."""

    def __init__(self, channels=4, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * 16, classes)

    def forward(self, x):
        return self.head(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class PlainDataset(torch.utils.data.Dataset):
    """(image, label) pairs from tensors: float images in [0, 1] on the 8-bit grid."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        x = torch.randint(0, 80, (n, 1, 8, 8), generator=g)
        for c in range(3):
            x[self.y == c, :, :, c * 2:c * 2 + 3] += 170
        self.x = x.float() / 255

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


COMMON = dict(eps=0.1, epochs=1, batch_size=32, val_size=32, val_steps=2, test_steps=2, seed=0)


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
            "OMP_NUM_THREADS": "1"}


def _reload_in_subprocess(run, x, tmp_path):
    torch.save(x, tmp_path / "x.pt")
    script = (f"import torch, fastrobust; m = fastrobust.load_model({str(run)!r}); "
              f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, env=_env(), cwd=tmp_path)
    return torch.load(tmp_path / "y.pt")


@pytest.mark.slow
@pytest.mark.parametrize("method,params", [("pgd", {"steps": 2}), ("mdeat", {})])
def test_fit_own_model_and_dataset_reloads_in_new_process(tmp_path, method, params):
    torch.manual_seed(0)
    model = SmallNet(channels=4)
    out = tmp_path / method
    summary = fastrobust.fit(model, PlainDataset(192, 0), test_data=PlainDataset(48, 1), method=method,
                             method_params=params, out=str(out), model_options={"channels": 4},
                             progress=False, echo=lambda s: None, **COMMON)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt", "train.log"):
        assert (out / name).is_file(), name
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["model"] == "test_fit:SmallNet" and summary["test_examples"] == 48
    assert summary["passes_per_example"] > 0
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    if method == "pgd":
        assert summary["passes_per_example"] == pytest.approx(3.0)   # K + 1 with K = 2
    x = PlainDataset(5, 7).x
    here = fastrobust.load_model(out)(x)
    assert torch.equal(model.eval()(x), here)   # trained in place: the module holds best.pt's weights
    assert torch.equal(_reload_in_subprocess(out, x, tmp_path), here)


def test_fit_forms_of_data(tmp_path):
    train = PlainDataset(160, 0)
    val = PlainDataset(40, 2)
    loader = torch.utils.data.DataLoader(train, batch_size=50, shuffle=False)
    torch.manual_seed(0)   # the model's initial weights are the caller's
    s1 = fastrobust.fit(SmallNet(), loader, val_data=(val.x, val.y), method="fgsm-rs", out=str(tmp_path / "a"),
                        progress=False, echo=lambda s: None, **{**COMMON, "val_size": 0})
    torch.manual_seed(0)
    s2 = fastrobust.fit(SmallNet(), (train.x, train.y), val_data=val, method="fgsm-rs", out=str(tmp_path / "b"),
                        progress=False, echo=lambda s: None, **{**COMMON, "val_size": 0})
    for s in (s1, s2):
        assert s["test_examples"] == 0 and s["test_clean_acc"] is None   # no test data given
    # the same data in two forms, the same seed: the same run
    assert s1["val_robust_acc"] == s2["val_robust_acc"] and s1["val_clean_acc"] == s2["val_clean_acc"]
    log = (tmp_path / "a" / "train.log").read_text()
    assert "160 train / 40 val / 0 test" in log


@pytest.mark.slow
def test_fit_unimportable_model_and_load_into_given_module(tmp_path):
    class LocalNet(SmallNet):   # defined in a function: no other process can import it
        pass

    out = tmp_path / "local"
    fastrobust.fit(LocalNet(), PlainDataset(96, 0), method="natural", out=str(out), progress=False,
                   echo=lambda s: None, **COMMON)
    script = f"import fastrobust; fastrobust.load_model({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "LocalNet was defined where another process cannot import it" in proc.stderr
    assert "fastrobust.load_model(path, model=YourNet(...))" in proc.stderr
    x = PlainDataset(4, 3).x
    loaded = fastrobust.load_model(out, model=SmallNet())
    assert torch.equal(loaded(x), fastrobust.load_model(out, model=LocalNet())(x))
    with pytest.raises(FastrobustError, match="trained with fastrobust.fit on data given from Python"):
        fastrobust.evaluation.evaluate_checkpoint(out, attacks=["clean"])


def test_fit_bad_input_refused_before_training(tmp_path):
    class WrongOut(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ConfigError, match=r"returns \(2, 64\) for a batch of shape \(2, 1, 8, 8\)"):
        fastrobust.fit(WrongOut(), PlainDataset(64, 0), out=str(tmp_path / "w"), echo=lambda s: None, **COMMON)
    bad = PlainDataset(64, 0)
    bad.y = bad.y.clone()
    bad.y[3] = 9
    with pytest.raises(FastrobustError, match=r"train label 9 is outside \[0, 3\)"):
        fastrobust.fit(SmallNet(), bad, num_classes=3, out=str(tmp_path / "l"), echo=lambda s: None, **COMMON)
    with pytest.raises(ConfigError, match="unknown argument"):
        fastrobust.fit(SmallNet(), PlainDataset(64, 0), learning_rate=0.1, out=str(tmp_path / "u"))
    assert not any((tmp_path / n).exists() and any((tmp_path / n).iterdir()) for n in ("w", "l", "u"))


class _Kill(Exception):
    pass


class KillAfterEpoch1:
    def on_checkpoint(self, path):
        if path.name == "last.pt":
            raise _Kill


def test_fit_killed_and_resumed_gives_the_same_weights(tmp_path):
    kw = dict(method="pgd", method_params={"steps": 1}, test_data=PlainDataset(32, 1), progress=False,
              echo=lambda s: None, **{**COMMON, "epochs": 2})
    torch.manual_seed(0)
    fastrobust.fit(SmallNet(), PlainDataset(128, 0), out=str(tmp_path / "full"), **kw)
    torch.manual_seed(0)
    with pytest.raises(_Kill):
        fastrobust.fit(SmallNet(), PlainDataset(128, 0), out=str(tmp_path / "cut"), callbacks=[KillAfterEpoch1()], **kw)
    assert not (tmp_path / "cut" / "summary.json").exists()
    fastrobust.fit(SmallNet(), PlainDataset(128, 0), out=str(tmp_path / "cut"), resume=True, **kw)
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "full" / name, weights_only=True)["model"]
        b = torch.load(tmp_path / "cut" / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_fit_fastrobust_classifier_keeps_its_normalisation(tmp_path):
    from fastrobust.models import Classifier

    wrapped = Classifier(SmallNet(), [0.5], [0.25])
    summary = fastrobust.fit(wrapped, PlainDataset(96, 0), method="natural", out=str(tmp_path / "c"),
                             progress=False, echo=lambda s: None, **COMMON)
    assert summary["model"] == "test_fit:SmallNet"
    model = fastrobust.load_model(tmp_path / "c")
    x = PlainDataset(3, 4).x
    assert torch.equal(model(x), wrapped.net.eval()((x - 0.5) / 0.25))
