"""The command line: help, listings, refusals of bad input, a real run."""

import json
import subprocess
import sys

import pytest

from fastrobust.cli import config_from_args, build_parser, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastrobust", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_help_explains_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("demo", "train", "methods", "passes per example"):
        assert word in r.stdout
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--eps" in r.stdout and "--replays" in r.stdout and "--resume" in r.stdout


def test_methods_lists_each_method_with_parameters(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("natural", "pgd", "fgsm-rs", "free", "--steps", "--replays"):
        assert name in out


def test_flags_and_config_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 7\neps: 0.2\nmethod_params: {steps: 3}\n")
    args = build_parser().parse_args(["train", "--config", str(cfg_file), "--eps", "8/255", "--steps", "5",
                                      "--model-opt", "width=16", "--lr-milestones", "2,4"])
    cfg = config_from_args(args)
    assert cfg.epochs == 7 and cfg.eps == pytest.approx(8 / 255) and cfg.method_params == {"steps": "5"}
    assert cfg.model_options == {"width": 16} and cfg.lr_milestones == [2.0, 4.0]


@pytest.mark.parametrize("args,words", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--dataset", "imagenet42"], "unknown dataset 'imagenet42'"),
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--method", "pgd", "--eps", "0.1", "--alpha", "0.2"], "must not exceed eps"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--model", "resnet9000"], "unknown model"),
    (["--method", "pgd", "--replays", "3"], "--replays is not a parameter of method pgd (it is one of"),
])
def test_bad_values_refused_cleanly(tmp_path, args, words, capsys):
    """The command line's checks, run in this process (the entry point's exit code and message are
    test_bad_config_key_refused's)."""
    out = tmp_path / "run"
    try:
        rc = main(["train", "--out", str(out), "--no-progress", *args])
    except SystemExit as done:     # argparse's own refusals
        rc = done.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_bad_config_key_refused(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epoch: 3\n")
    r = run_cli("train", "--config", str(cfg_file))
    assert r.returncode == 2 and "unknown configuration key 'epoch'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_train_command_writes_outputs(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--method", "fgsm-rs", "--epochs", "1", "--train-subset", "200", "--val-size", "100",
                "--test-subset", "100", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fgsm-rs" and summary["passes_per_example"] == pytest.approx(2.0)
    assert "epoch 1/1" in r.stdout
