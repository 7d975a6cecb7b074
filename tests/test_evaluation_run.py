"""fastrobust.evaluation on a small adversarially trained model (a few epochs of PGD-AT on the shipped
MNIST subset): agreement with AutoAttack's APGD-CE, monotonicity in steps, `evaluate_checkpoint`
and `fastrobust eval`, refusals of bad input."""

import json
import warnings

import pytest
import torch

import fastrobust
from fastrobust.cli import main
from fastrobust.config import TrainConfig
from fastrobust.data import load_dataset, take_subset
from fastrobust.engine import train
from fastrobust.errors import ConfigError, FastrobustError
from fastrobust.evaluation import GradientMaskingWarning, evaluate, evaluate_checkpoint

EPS = 0.1
TEST = 200


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)
        return fn(*args, progress=False, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """PGD-5 AT, 4 epochs on 2,500 training images (about 5 s on 2 cores): ~95% clean, ~85% PGD-20 at eps 0.1."""
    out = tmp_path_factory.mktemp("eval") / "pgd"
    cfg = TrainConfig(method="pgd", dataset="mnist-subset", model="mnist-cnn", epochs=4, batch_size=50,
                      optimizer="adam", lr=2e-3, lr_schedule="constant", eps=EPS, val_size=200, train_subset=2500,
                      test_subset=TEST, val_steps=5, seed=0, method_params={"steps": 5}, out=str(out))
    summary = train(cfg, progress=False, echo=lambda line: None)
    return out, summary


@pytest.fixture(scope="module")
def test_split():
    return take_subset(load_dataset("mnist-subset").test, TEST, seed=0)


@pytest.mark.slow
def test_our_pgd20_and_autoattack_apgd_ce_agree(run):
    out, summary = run
    result = quiet(evaluate_checkpoint, out, attacks="clean,pgd20,apgd-ce", cascade=False, out=out / "agree.json")
    pgd20, apgd = result["attacks"]["pgd20"]["accuracy"], result["attacks"]["apgd-ce"]["accuracy"]
    assert result["n"] == TEST and result["eps"] == EPS
    assert 0.5 < pgd20 < result["clean_accuracy"]          # the model is robust, but not perfectly
    assert abs(pgd20 - apgd) <= 0.02
    assert result["attacks"]["apgd-ce"]["settings"]["apgd_iterations"] == 100


@pytest.mark.slow
def test_robust_accuracy_never_rises_with_more_steps_or_restarts(run, test_split):
    model = fastrobust.load_model(run[0])
    # a fixed step: PGD-K's first K steps are PGD-k's for k < K (same seed, same batches)
    x, y = test_split.x[:100], test_split.y[:100]
    result = quiet(evaluate, model, x, y, attacks="pgd2,pgd5,pgd10,pgd20,pgd40,pgd20x3", eps=EPS, alpha=EPS / 8,
                   cascade=False)
    acc = {name: a["accuracy"] for name, a in result["attacks"].items()}
    steps = [acc[name] for name in ("pgd2", "pgd5", "pgd10", "pgd20", "pgd40")]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]
    assert acc["pgd20x3"] <= acc["pgd20"]
    # with each K's own step (2.5 eps / K), in the cascade: the worst case only falls
    result = quiet(evaluate, model, x, y, attacks="fgsm,pgd5,pgd20,pgd100", eps=EPS)
    worst = [a["worst_case_accuracy"] for a in result["attacks"].values()]
    assert worst == sorted(worst, reverse=True)
    assert model.training is False


@pytest.mark.slow
def test_evaluate_checkpoint_uses_the_runs_test_split_and_writes_eval_json(run, test_split):
    out, summary = run
    assert summary["test_attack"].startswith("PGD-20 CE")    # train's summary keeps its own PGD-20 number
    result = quiet(evaluate_checkpoint, out, attacks="clean,pgd20,cw20")
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert result["dataset"] == "mnist-subset" and result["test_subset"] == TEST and result["n"] == TEST
    assert result["checkpoint"].endswith("best.pt") and result["method"] == "pgd"
    assert result["clean_accuracy"] == pytest.approx(summary["test_clean_acc"])   # the same images and model
    assert abs(result["attacks"]["pgd20"]["accuracy"] - summary["test_robust_acc"]) <= 0.02
    assert result["attacks"]["cw20"]["settings"]["loss"] == "cw"
    # --test-subset N takes the trainer's N images
    small = quiet(evaluate_checkpoint, out, attacks="clean", test_subset=50, out=out / "small.json")
    model = fastrobust.load_model(out)
    with torch.no_grad():
        sub = take_subset(load_dataset("mnist-subset").test, 50, seed=0)
        direct = (model(sub.x.float() / 255).argmax(1) == sub.y).float().mean().item()
    assert small["n"] == 50 and small["clean_accuracy"] == pytest.approx(direct)
    assert small["robust_accuracy"] is None                # no attack was run


def test_a_checkpoint_file_gets_its_own_json(run):
    out, _ = run
    result = quiet(evaluate_checkpoint, out / "last.pt", attacks="fgsm", eps=0.05, test_subset=40)
    saved = json.loads((out / "last.eval.json").read_text())
    assert saved["eps"] == 0.05 and saved["attacks"]["fgsm"]["accuracy"] == result["attacks"]["fgsm"]["accuracy"]


def test_cli_eval_prints_the_table_and_writes_the_json(run, tmp_path, capsys):
    out, _ = run
    target = tmp_path / "e.json"
    assert main(["eval", str(out), "--attacks", "clean,fgsm,pgd10", "--test-subset", "60", "--eps", "1/10",
                 "--no-progress", "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    for words in ("| attack", "fgsm", "pgd10", "robust accuracy", f"wrote {target}"):
        assert words in printed
    result = json.loads(target.read_text())
    assert result["n"] == 60 and list(result["attacks"]) == ["clean", "fgsm", "pgd10"]


def _bad_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    empty_dir = tmp_path / "empty_run"
    empty_dir.mkdir()
    return foreign, corrupt, empty_dir


@pytest.mark.parametrize("case,words", [
    ("foreign", "not a fastrobust checkpoint"),
    ("corrupt", "is not a fastrobust checkpoint: it cannot be read"),
    ("empty_run", "holds no best.pt"),
    ("missing", "does not exist"),
    ("attack", "unknown attack 'pgd-20'"),
    ("eps", "did you mean 8/255"),
    ("l2", "give --eps for norm l2"),
    ("batch", "batch_size must be an integer >= 1"),
])
def test_cli_eval_refuses_bad_input_clearly(run, tmp_path, capsys, case, words):
    out, _ = run
    foreign, corrupt, empty_dir = _bad_checkpoints(tmp_path)
    path = {"foreign": foreign, "corrupt": corrupt, "empty_run": empty_dir, "missing": tmp_path / "nope"}.get(case, out)
    extra = {"attack": ["--attacks", "clean,pgd-20"], "eps": ["--eps", "8"], "l2": ["--norm", "l2"],
             "batch": ["--batch-size", "0"]}.get(case, [])
    target = tmp_path / "never.json"
    assert main(["eval", str(path), *extra, "--no-progress", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrobust: error:") and words in err and "Traceback" not in err
    assert not target.exists()


def test_api_refuses_bad_input_before_loading_data(run):
    out, _ = run
    with pytest.raises(ConfigError, match="unknown attack"):
        evaluate_checkpoint(out, attacks="pgd20,zoo")
    with pytest.raises(ConfigError, match="test_subset"):
        evaluate_checkpoint(out, test_subset=0)
    with pytest.raises(FastrobustError, match="does not exist"):
        evaluate_checkpoint(out / "missing.pt")


@pytest.mark.slow
def test_demo_prints_autoattack_accuracy_on_a_test_subset(tmp_path):
    from fastrobust.demo import run_demo

    lines = []
    summaries = run_demo(out=str(tmp_path / "demo"), epochs=1, methods="natural", progress=False,
                         echo=lines.append, aa_examples=10)
    printed = "\n".join(lines)
    assert "AutoAttack on 10 test images" in printed and "| AA %" in printed and "on 10 of the test images" in printed
    assert summaries[0]["aa_examples"] == 10 and 0 <= summaries[0]["aa_acc"] <= summaries[0]["test_clean_acc"] + 0.1
    saved = json.loads((tmp_path / "demo" / "natural" / "eval.json").read_text())
    assert saved["n"] == 10 and saved["robust_accuracy"] == summaries[0]["aa_acc"]


@pytest.mark.slow
def test_demo_prints_gaat_and_mdeat_next_to_pgd(tmp_path):
    from fastrobust.demo import run_demo

    lines = []
    run_demo(out=str(tmp_path / "demo"), epochs=1, progress=False, echo=lines.append, aa_examples=0)
    table = lines[-2]
    rows = [l.split("|")[1].strip() for l in table.splitlines() if l.startswith("| ") and "method" not in l]
    assert rows == ["pgd", "gaat", "deat-p"]
