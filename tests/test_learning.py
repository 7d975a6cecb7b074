"""Defaults that learn: an eps warm-up by default (a fifth of the epochs), kept out of the suites that record
results (they set their own), and the issue's L2 run, which stayed at chance at full eps from the first step,
learns with the defaults or says loudly that it did not."""

import json

import pytest
import yaml

from fastrobust.bench import load_suite, shipped_suites
from fastrobust.cli import main
from fastrobust.config import EPS_WARMUP_SHARE, TrainConfig, default_eps_warmup, resolve
from fastrobust.data import DATASETS
from fastrobust.methods import get_method


def _resolved(**values):
    return resolve(TrainConfig().update(values, "test"), DATASETS["mnist"], get_method("pgd"))


def test_default_eps_warmup_is_a_share_of_the_epochs_and_an_explicit_one_is_kept():
    assert EPS_WARMUP_SHARE == 0.2
    assert [_resolved(epochs=e).eps_warmup for e in (1, 2, 3, 10)] == pytest.approx([0.2, 0.4, 0.6, 2.0])
    assert _resolved(epochs=10, eps_warmup=0).eps_warmup == 0       # full eps at once, when asked
    assert _resolved(epochs=10, eps_warmup=3).eps_warmup == 3
    assert default_eps_warmup(0) == 0.0
    assert TrainConfig().eps_warmup is None   # unset: resolved from the epochs


def test_every_shipped_suite_sets_its_own_eps_warmup():
    """Recorded results stay reproducible: no suite leaves the ramp to the default."""
    for name in shipped_suites():
        suite = load_suite(name)
        assert "eps_warmup" in suite.common or all("eps_warmup" in run.config for run in suite.runs), name


def _train(tmp_path, name, *extra):
    out = tmp_path / name
    code = main(["train", "--method", "pgd", "--norm", "l2", "--eps", "2.0", "--dataset", "mnist-subset",
                 "--train-subset", "3000", "--val-size", "500", "--test-subset", "500", "--epochs", "2",
                 "--no-progress", "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / "summary.json").read_text()), (out / "train.log").read_text().splitlines()


@pytest.mark.slow
def test_the_issue_l2_run_learns_with_the_defaults_and_says_so_when_it_does_not(tmp_path):
    # issue 23: `--method pgd --norm l2 --eps 2.0 --train-subset 3000 --epochs 2` ended at chance and said "done"
    summary, log = _train(tmp_path, "default")
    assert yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())["eps_warmup"] == pytest.approx(0.4)
    assert summary["learned"] is True and summary["test_clean_acc"] > 0.6, summary
    assert log[-1].startswith("done: ")
    summary, log = _train(tmp_path, "full-eps", "--eps-warmup", "0")
    assert summary["learned"] is False and "at chance level" in summary["not_learned"]
    assert summary["test_clean_acc"] < 0.2
    assert log[-1].startswith("warning: the model did not learn: clean test accuracy")
