"""L2 adversarial training end to end: `fastrobust train --norm l2` on the shipped MNIST subset, and
`fastrobust eval` of the run (L2 by default) checked against an independent L2 PGD (torchattacks)."""

import json
import math
import warnings

import pytest
import torch

import fastrobust
from fastrobust.cli import main
from fastrobust.data import load_dataset, take_subset
from fastrobust.evaluation import GradientMaskingWarning

EPS, TEST = 2.0, 200


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("l2") / "pgd-l2"
    code = main(["train", "--method", "pgd", "--steps", "5", "--norm", "l2", "--eps", str(EPS), "--dataset",
                 "mnist-subset", "--epochs", "3", "--eps-warmup", "1", "--train-subset", "2500", "--val-size", "200",
                 "--test-subset", str(TEST), "--val-steps", "5", "--lr-schedule", "constant", "--lr", "2e-3",
                 "--batch-size", "50", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.mark.slow
def test_l2_run_records_its_threat_model(run):
    cfg = fastrobust.config.load_yaml(run / "config.yaml")
    summary = json.loads((run / "summary.json").read_text())
    assert cfg["norm"] == "l2" and cfg["eps"] == EPS and cfg["alpha"] == pytest.approx(2.5 * EPS / 5)
    assert summary["norm"] == "l2" and "L2" in summary["test_attack"]
    assert summary["test_robust_acc"] < summary["test_clean_acc"]


def test_eval_defaults_to_the_runs_norm_and_is_not_above_an_independent_l2_pgd(run, capsys):
    torchattacks = pytest.importorskip("torchattacks", reason="torchattacks (pip install --no-deps torchattacks) "
                                                              "is the independent L2 PGD")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)
        assert main(["eval", str(run), "--attacks", "clean,pgd20", "--no-progress"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["norm"] == "l2" and result["eps"] == EPS and result["n"] == TEST
    ours = result["robust_accuracy"]

    model = fastrobust.load_model(run).eval()
    test = take_subset(load_dataset("mnist-subset").test, TEST, seed=0)
    x, y = test.x.float() / 255, test.y
    torch.manual_seed(0)
    attack = torchattacks.PGDL2(model, eps=EPS, alpha=2.5 * EPS / 20, steps=20, random_start=True)
    x_adv = attack(x, y)
    with torch.no_grad():
        theirs = (model(x_adv).argmax(1) == y).float().mean().item()
    noise = 2 * math.sqrt(max(theirs * (1 - theirs), 0.01) / TEST)    # two binomial standard errors
    assert ours <= theirs + noise, (ours, theirs)
    assert 0.0 < theirs < result["clean_accuracy"]                     # a model that is attacked, not broken


def test_eval_of_an_l2_run_under_linf_needs_an_eps(run, capsys):
    assert main(["eval", str(run), "--norm", "linf", "--no-progress"]) == 2
    assert "give --eps for norm linf" in capsys.readouterr().err
