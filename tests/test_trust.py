"""Code named in a folder runs only when trusted, and a run never writes over what fastrobust did not write.

Each reproduction plants a reference that would create a marker file if it were called
(``subprocess:getoutput`` with a ``touch`` command) and checks that the marker never appears."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fastrobust
from fastrobust import trust
from fastrobust.cli import main
from fastrobust.config import TrainConfig
from fastrobust.engine import load_checkpoint, train
from fastrobust.engine.checkpoint import save_checkpoint
from fastrobust.engine.lock import LOCK_NAME, RunLock, RunFolderInUse
from fastrobust.errors import FastrobustError
from fastrobust.evaluation import evaluate_checkpoint
from fastrobust.trust import UntrustedCode

from test_reliability import assert_clean_error, fr

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="mnist-subset", train_subset=200, val_size=50, test_subset=50, batch_size=50,
            val_steps=2, test_steps=2, eps=0.3, epochs=1, method="natural")
EVIL = "subprocess:getoutput"


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A run the user trained (with a model factory of theirs): trusted where it was trained."""
    out = tmp_path_factory.mktemp("own") / "run"
    train(TrainConfig(**TINY, model="user_nets:make_net", out=str(out)), progress=False, echo=lambda s: None)
    return out


def _received(own_run, tmp_path) -> Path:
    """A copy of the run somewhere else: a folder someone sent."""
    copy = tmp_path / "received"
    shutil.copytree(own_run, copy)
    return copy


def _plant_in_checkpoint(run: Path, marker: Path) -> None:
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / name)
        payload["model_spec"].update(name=EVIL, options={"cmd": f"touch {marker}"})
        save_checkpoint(run / name, {k: v for k, v in payload.items() if k not in ("format", "format_version")})


def _plant_in_config(run: Path, marker: Path, key: str) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[key] = EVIL
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def _cli_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}


@pytest.mark.slow
def test_own_run_reloads_in_a_new_process_a_copy_elsewhere_needs_trust(own_run, tmp_path):
    script = f"import fastrobust; fastrobust.load_model({str(own_run)!r}); print('ok')"
    done = subprocess.run([sys.executable, "-c", script], env=_cli_env(), capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    copy = _received(own_run, tmp_path)
    with pytest.raises(UntrustedCode, match="user_nets:make_net.*trust_code=True"):
        fastrobust.load_model(copy)
    assert fastrobust.load_model(copy, trust_code=True)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_allow_list_by_environment_and_by_file(own_run, tmp_path, monkeypatch):
    copy = _received(own_run, tmp_path)
    monkeypatch.setenv(trust.TRUSTED_ENV, "other_pkg, user_nets")   # a module prefix
    fastrobust.load_model(copy)
    monkeypatch.setenv(trust.TRUSTED_ENV, "user_nets:other")
    with pytest.raises(UntrustedCode):
        fastrobust.load_model(copy)
    monkeypatch.delenv(trust.TRUSTED_ENV)
    monkeypatch.setenv(trust.CONFIG_DIR_ENV, str(tmp_path / "cfg"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / trust.ALLOW_FILE).write_text("# mine\nuser_nets:make_net\n")
    fastrobust.load_model(copy)


@pytest.mark.slow
def test_planted_checkpoint_reference_runs_nowhere(own_run, tmp_path):
    copy = _received(own_run, tmp_path)
    marker = tmp_path / "PWNED"
    _plant_in_checkpoint(copy, marker)
    with pytest.raises(UntrustedCode, match=EVIL):
        fastrobust.load_model(copy)
    with pytest.raises(UntrustedCode):
        fastrobust.load_model(copy / "best.pt")
    with pytest.raises(UntrustedCode):
        evaluate_checkpoint(copy, progress=False)
    for args in (["eval", copy], ["export", copy]):
        rc, _, err = fr(*args)
        assert_clean_error(rc, err, EVIL, "--trust-code")
    rc, _, err = fr("train", "--resume", "--out", copy, "--no-progress")   # its config.yaml's model comes first
    assert_clean_error(rc, err, "user_nets:make_net", "--trust-code")
    assert not marker.exists()
    assert not (copy / "export").exists() and not (copy / "eval.json").exists()
    assert not trust.remembered(copy, EVIL)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["model", "dataset"])
def test_planted_config_reference_runs_nowhere(own_run, tmp_path, key, monkeypatch):
    monkeypatch.setenv(trust.TRUSTED_ENV, "user_nets")   # the run's own model: only the planted code is refused
    copy = _received(own_run, tmp_path)
    marker = tmp_path / "PWNED"
    _plant_in_config(copy, marker, key)
    rc, _, err = fr("train", "--resume", "--out", copy, "--no-progress")
    assert_clean_error(rc, err, EVIL)
    if key == "dataset":
        rc, _, err = fr("eval", copy)
        assert_clean_error(rc, err, EVIL)
    assert not marker.exists()


def test_planted_export_reference_runs_nowhere(own_run, tmp_path):
    from fastrobust.export import export_run

    folder = export_run(own_run, out=tmp_path / "exp")
    assert fastrobust.load_model(folder)(torch.rand(1, 1, 28, 28)).shape == (1, 10)   # exported by its user
    sent = tmp_path / "sent"
    shutil.copytree(folder, sent)
    config = json.loads((sent / "config.json").read_text())
    config["model"].update(name=EVIL, options={"cmd": f"touch {tmp_path / 'PWNED'}"})
    (sent / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedCode, match=EVIL):
        fastrobust.load_model(sent)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_export_snippet_shows_the_call(own_run, tmp_path):
    rc, out, err = fr("export", own_run, "--out", tmp_path / "e", cwd=tmp_path)
    assert rc == 0, err
    assert "from user_nets import make_net" in out and "net = make_net(" in out and "imports and calls" in out


def test_resume_naming_the_model_again_is_trust(own_run, tmp_path):
    copy = _received(own_run, tmp_path)
    (copy / "summary.json").unlink()
    with pytest.raises(UntrustedCode):
        train(TrainConfig(out=str(copy)), resume=True, progress=False, echo=lambda s: None)
    summary = train(TrainConfig(out=str(copy), model="user_nets:make_net"), resume=True, progress=False,
                    echo=lambda s: None)
    assert (copy / "summary.json").is_file() and summary["model"] == "user_nets:make_net"


# ---- never write over what fastrobust did not write ----

@pytest.mark.slow
def test_training_refuses_a_folder_of_the_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("best.pt", "my weights"), ("metrics.jsonl", "my metrics\n"), ("train.log", "my log\n")):
        (out / name).write_text(text)
    with pytest.raises(FastrobustError, match="did not write.*best.pt"):
        train(TrainConfig(**TINY, out=str(out)), progress=False, echo=lambda s: None)
    assert [(out / n).read_text() for n in ("best.pt", "metrics.jsonl", "train.log")] == \
        ["my weights", "my metrics\n", "my log\n"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    rc, _, err = fr("train", "--method", "natural", "--epochs", "1", "--train-subset", "200", "--val-size", "50",
                    "--out", other, "--no-progress")
    assert_clean_error(rc, err, "notes.txt")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_resume_does_not_append_through_a_symlink(own_run, tmp_path):
    copy = _received(own_run, tmp_path)
    (copy / "summary.json").unlink()
    outside = tmp_path / "elsewhere.log"
    outside.write_text("mine\n")
    (copy / "train.log").unlink()
    (copy / "train.log").symlink_to(outside)
    with pytest.raises(FastrobustError, match="symbolic link"):
        train(TrainConfig(out=str(copy), model="user_nets:make_net"), resume=True, progress=False,
              echo=lambda s: None)
    assert outside.read_text() == "mine\n"


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(own_run, tmp_path):
    before = {p.name: p.read_bytes() for p in own_run.iterdir() if p.is_file() and p.name != LOCK_NAME}
    rc, out, err = fr("train", "--resume", "--out", own_run, "--no-progress")
    assert rc == 0, err
    assert "has finished" in out and "nothing was changed" in out
    assert {p.name: p.read_bytes() for p in own_run.iterdir() if p.is_file() and p.name != LOCK_NAME} == before


# ---- our own words ----

@pytest.mark.slow
def test_binary_config_is_one_line(own_run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(bytes(range(256)) * 4)
    rc, _, err = fr("train", "--config", bad, "--out", tmp_path / "x")
    assert_clean_error(rc, err, "not a text (UTF-8) file")
    copy = _received(own_run, tmp_path)
    (copy / "config.yaml").write_bytes(bytes(range(256)))
    for args in (["eval", copy], ["train", "--resume", "--out", copy]):
        rc, _, err = fr(*args)
        assert_clean_error(rc, err, "not a text (UTF-8) file")


@pytest.mark.slow
def test_unreadable_or_refused_checkpoint_gives_no_unsafe_advice(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "fastrobust-checkpoint", "x": Evil()}, evil)
    for path, words in ((junk, "cannot be read"), (evil, "possibly code")):
        rc, _, err = fr("eval", path)
        assert_clean_error(rc, err, "not a fastrobust checkpoint", words)
        assert "weights_only" not in err and "Re-running" not in err
    assert not (tmp_path / "PWNED").exists()


# ---- one consistent folder ----

def test_eval_is_refused_while_training_holds_the_folder(own_run, tmp_path):
    copy = _received(own_run, tmp_path)
    (copy / "eval.json").unlink(missing_ok=True)
    (copy / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-machine", "command": "fastrobust train"}))
    with pytest.raises(RunFolderInUse, match="fastrobust train"):
        evaluate_checkpoint(copy, progress=False, trust_code=True)
    assert not (copy / "eval.json").exists()


def test_export_ignores_an_eval_json_of_another_checkpoint(own_run, tmp_path):
    from fastrobust.export import export_run

    copy = _received(own_run, tmp_path)
    evaluate_checkpoint(copy, progress=False, trust_code=True)
    stale = json.loads((copy / "eval.json").read_text())
    assert stale["checkpoint_sha256"] and stale["epoch"] == load_checkpoint(copy / "best.pt")["epoch"]
    config = json.loads((export_run(copy, out=tmp_path / "e1", trust_code=True) / "config.json").read_text())
    assert config["accuracy"]["source"] == "eval.json"
    stale.update(checkpoint_sha256="0" * 64, epoch=0, clean_accuracy=0.123)
    (copy / "eval.json").write_text(json.dumps(stale))
    config = json.loads((export_run(copy, out=tmp_path / "e2", trust_code=True) / "config.json").read_text())
    assert config["accuracy"]["source"] == "summary.json" and "not used" in config["accuracy"]["note"]
    assert config["accuracy"]["clean_acc"] != 0.123


def test_stale_lock_takeover_puts_back_a_lock_made_meanwhile(tmp_path):
    lock = RunLock(tmp_path)
    live = {"pid": os.getpid() + 1, "host": "x", "command": "fastrobust train"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(live))
    lock._take_over({"pid": 999999, "host": "x"})   # judged stale earlier; another lock stands there now
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == live
    lock._take_over(live)   # the one judged stale: removed
    assert not (tmp_path / LOCK_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == []
