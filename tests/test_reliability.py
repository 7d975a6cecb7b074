"""Faults and bad input thrown at the command line (fastrobust issue 14): one writer per run folder,
the NaN stop, a crash-safe first epoch, one-line errors with exit code 2 and nothing half-written,
and the evaluation's refusal of broken models and its check of a gap between attacks.

Most cases run the real CLI in a subprocess on tiny runs of the shipped MNIST subset."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

import fastrobust
from fastrobust import cli
from fastrobust.engine import checkpoint as ckpt_mod
from fastrobust.engine import load_checkpoint
from fastrobust.engine.lock import LOCK_NAME, RunFolderInUse, RunLock
from fastrobust.evaluation import GradientMaskingWarning, checks, evaluate
from fastrobust.evaluation.specs import spec_of

SRC = str(Path(fastrobust.__file__).resolve().parents[1])
TINY = ["--train-subset", "200", "--val-size", "50", "--test-subset", "50", "--val-steps", "2", "--test-steps", "2",
        "--no-progress"]


def _env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def fr(*args, cwd=None, timeout=300):
    """``fastrobust ARGS`` in a subprocess: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "fastrobust", *map(str, args)], capture_output=True, text=True,
                       env=_env(), cwd=cwd, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def train(out, *extra, method="natural", epochs=1):
    return fr("train", "--method", method, "--epochs", epochs, *TINY, *extra, "--out", out)


def assert_clean_error(rc, err, *words):
    """Exit code 2, one line `fastrobust...: error: ...` naming the words, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    for w in words:
        assert w in lines[0], (w, lines[0])


def epochs_of(run):
    return [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


def leftovers(run):
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == LOCK_NAME)


# ---------------------------------------------------------------- one writer per run folder

@pytest.mark.slow
def test_lock_refuses_a_second_writer_and_takes_over_a_dead_ones_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        rc, _, err = train(run)
        assert_clean_error(rc, err, "in use by process", str(holder.pid), "another --out")
        rc, _, err = fr("train", "--resume", "--out", run)   # --resume too (config.yaml missing does not matter)
        assert rc == 2 and "Traceback" not in err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]   # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over; removed at exit
    rc, out, err = train(run)
    assert rc == 0, err
    assert not (run / LOCK_NAME).exists()
    assert epochs_of(run) == [1]


def test_lock_of_another_host_is_not_taken_over_and_the_lock_is_reentrant(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "some-other-machine"}))
    with pytest.raises(RunFolderInUse, match=f"delete {run / LOCK_NAME}"):
        RunLock(run).acquire()
    (run / LOCK_NAME).unlink()
    with RunLock(run) as outer:
        with RunLock(run):       # bench holds it, the training inside takes it again
            pass
        assert (run / LOCK_NAME).exists()
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert not (run / LOCK_NAME).exists() and outer.created_folder is False


@pytest.mark.slow
def test_two_trainings_into_one_folder_at_once(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "fastrobust", "train", "--method", "pgd", "--epochs", "5", *TINY, "--out", str(run)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while not (run / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)   # it holds the folder (and its lock) for as long as the checks take
        for extra in ([], ["--eps", "0.1"]):
            rc, _, err = train(run, *extra, method="pgd", epochs=5)
            assert_clean_error(rc, err, "in use by process", str(first.pid))
        rc, _, err = fr("train", "--resume", "--out", run)
        assert_clean_error(rc, err, "in use by process")
        first.send_signal(signal.SIGKILL)   # no clean-up: the lock stays, with a dead pid
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (run / LOCK_NAME).exists()
    rc, _, err = fr("train", "--resume", "--out", run, "--no-progress")
    assert rc == 0, err
    assert epochs_of(run) == list(range(1, 6))      # one run's metrics, each epoch once
    assert yaml.safe_load((run / "config.yaml").read_text())["eps"] == 0.3
    assert not (run / LOCK_NAME).exists()


# ---------------------------------------------------------------- the NaN stop

@pytest.mark.slow
def test_diverged_training_stops_saves_nothing_non_finite_and_reports_no_accuracy(tmp_path):
    run = tmp_path / "run"
    rc, _, err = train(run, "--optimizer", "sgd", "--lr", "1e6", epochs=3)
    assert_clean_error(rc, err, "training stopped in epoch 2", "NaN", "lower --lr", "--grad-clip")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(l) for l in lines]        # standard JSON: json.loads refuses nothing here
    assert "NaN" not in (run / "metrics.jsonl").read_text() and "Infinity" not in (run / "metrics.jsonl").read_text()
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["non_finite"] is True and records[1]["val_robust_acc"] is None
    assert not (run / "summary.json").exists()      # no robust accuracy reported for it
    for name in ("best.pt", "last.pt"):
        ck = load_checkpoint(run / name)
        assert ck["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    assert "training stopped in epoch 2" in (run / "train.log").read_text()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_diverged_first_epoch_leaves_no_checkpoint_and_a_restartable_folder(tmp_path):
    run = tmp_path / "run"
    rc, _, err = train(run, "--method", "pgd", "--steps", "3", "--optimizer", "sgd", "--lr", "1e6",
                       "--train-subset", "600", epochs=2)
    assert_clean_error(rc, err, "training stopped in epoch 1", "no checkpoint was written")
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    # the same settings again: accepted (metrics of the failed attempt removed; it diverges again)
    rc, out, err = train(run, "--method", "pgd", "--steps", "3", "--optimizer", "sgd", "--lr", "1e6",
                         "--train-subset", "600", epochs=2)
    assert_clean_error(rc, err, "training stopped in epoch 1")
    assert "starting again from epoch 0" in out and epochs_of(run) == [1]
    # other settings: refused
    rc, _, err = train(run, "--method", "pgd", "--steps", "3", "--lr", "1e-3", "--train-subset", "600", epochs=2)
    assert_clean_error(rc, err, "another run", "lr", "another --out")
    assert epochs_of(run) == [1]


@pytest.mark.slow
def test_eval_flags_a_model_with_non_finite_logits(tmp_path):
    run = tmp_path / "run"
    assert train(run)[0] == 0
    ck = load_checkpoint(run / "best.pt")
    ck["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ck["model"].items()}
    ckpt_mod.save_checkpoint(run / "best.pt", {k: v for k, v in ck.items() if k not in ("format", "format_version")})
    rc, out, err = fr("eval", run, "--attacks", "clean,pgd5", "--no-progress")
    assert rc == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert result["robust_accuracy"] is None and result["clean_accuracy"] is None and result["attacks"] == {}
    assert result["broken"] is True and [f["check"] for f in result["flags"]] == ["non_finite_logits"]
    assert "non_finite_logits" in out and "broken" in out


# ---------------------------------------------------------------- a crash in the first epoch

KILL_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    import fastrobust.engine.persist as t, fastrobust.engine.checkpoint as c
    target = sys.argv[1]
    def dying(path, payload):
        if path.name == target:   # killed halfway through the write: a temporary file stays behind
            c._atomic_write(path, lambda fh: (fh.write(b"partial"), fh.flush(), os.kill(os.getpid(), signal.SIGKILL)))
        return c.save_checkpoint(path, payload)
    t.save_checkpoint = dying
    from fastrobust.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _killed_train(run, target, *extra):
    args = ["train", "--method", "natural", "--epochs", "1", *TINY, *extra, "--out", str(run)]
    return subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, target, *args], capture_output=True, text=True,
                          env=_env(), timeout=300).returncode


@pytest.mark.slow
def test_kill_while_best_pt_is_written_resumes(tmp_path):
    run = tmp_path / "run"
    assert _killed_train(run, "best.pt") == -signal.SIGKILL
    assert (run / "last.pt").is_file() and not (run / "best.pt").exists()
    assert any(n.startswith(".best.pt.") for n in leftovers(run)) and LOCK_NAME in leftovers(run)
    rc, _, err = train(run)
    assert_clean_error(rc, err, "already holds a run", "--resume")
    rc, _, err = fr("train", "--resume", "--out", run, "--no-progress")
    assert rc == 0, err
    assert load_checkpoint(run / "best.pt")["epoch"] == 1       # rewritten from last.pt
    assert epochs_of(run) == [1] and leftovers(run) == []
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == 1


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_restarts_cleanly(tmp_path):
    run = tmp_path / "run"
    assert _killed_train(run, "last.pt") == -signal.SIGKILL
    assert (run / "config.yaml").is_file() and not (run / "last.pt").exists() and epochs_of(run) == [1]
    # other settings: refused, the folder unchanged
    rc, _, err = train(run, "--seed", "7")
    assert_clean_error(rc, err, "another run", "seed", "another --out")
    # --resume: starts again from epoch 0, one run's metrics
    rc, out, err = fr("train", "--resume", "--out", run, "--no-progress")
    assert rc == 0, err
    assert "starting again from epoch 0" in out and "removed 1 temporary file" in out
    assert epochs_of(run) == [1] and leftovers(run) == []


@pytest.mark.slow
def test_fresh_train_continues_a_folder_that_has_no_checkpoint_with_the_same_settings(tmp_path):
    run = tmp_path / "run"
    assert train(run)[0] == 0
    for name in ("last.pt", "best.pt", "summary.json"):   # as if it stopped before its first checkpoint
        (run / name).unlink()
    (run / ".last.pt.abc123.tmp").write_bytes(b"partial")
    rc, out, err = train(run)
    assert rc == 0, err
    assert epochs_of(run) == [1] and leftovers(run) == []


# ---------------------------------------------------------------- one-line errors

@pytest.mark.parametrize("text, words", [
    ("epochs: [1, 2]", ["epochs must be an integer", "epochs: 10"]),
    ("epochs: {a: 1}", ["epochs must be an integer"]),
    ("method_params: [1]", ["method_params must be a mapping", "method_params: {steps: 10}"]),
    ("model_options: 5", ["model_options must be a mapping", "model_options: {width: 16}"]),
])
@pytest.mark.slow
def test_bad_yaml_types_in_config(tmp_path, text, words):
    (tmp_path / "c.yaml").write_text(text + "\n")
    rc, _, err = train(tmp_path / "run", "--config", tmp_path / "c.yaml")
    assert_clean_error(rc, err, "c.yaml", *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["drop=[0.5", 'x=!!python/object/apply:os.system ["touch PWNED"]'])
def test_bad_model_opt_values(tmp_path, opt):
    rc, _, err = fr("train", *TINY, "--model-opt", opt, "--out", tmp_path / "run", cwd=tmp_path)
    assert_clean_error(rc, err, "--model-opt", "not valid YAML", "width=16")
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_out_an_existing_file_or_unwritable(tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, _, err = train(tmp_path / "afile")
    assert_clean_error(rc, err, "existing file", "another --out")
    rc, _, err = train(tmp_path / "afile" / "sub")
    assert_clean_error(rc, err, "cannot write", "another location")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.slow
def test_out_on_a_read_only_location(tmp_path):
    ro = Path("/sys/fastrobust-test")
    if not os.path.ismount("/sys"):
        pytest.skip("no sysfs at /sys (a location where nothing can be created) on this machine")
    rc, _, err = train(ro / "run")
    assert_clean_error(rc, err, "cannot write", "writable location")


@pytest.mark.slow
def test_eval_out_unwritable_is_refused_before_any_attack(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert train(run)[0] == 0
    monkeypatch.setattr("fastrobust.evaluation.runs.evaluate",
                        lambda *a, **k: pytest.fail("an attack ran before the output was checked"))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "eval.json", tmp_path):
        assert cli.main(["eval", str(run), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and len(err.strip().splitlines()) == 1
    assert not (run / "eval.json").exists()


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save = torch.save

    def full_at_epoch_2(obj, fh):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_at_epoch_2)
    args = ["train", "--method", "natural", "--epochs", "2", *TINY, "--out", str(run)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device" in err and "--resume" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert leftovers(run) == []
    monkeypatch.undo()
    assert cli.main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert epochs_of(run) == [1, 2]


def test_torch_zip_writer_failure_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    def broken(obj, fh):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4160 vs 4054")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken)
    with pytest.raises(ckpt_mod.WriteError, match="no space left on the device"):
        ckpt_mod.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_resume_compares_every_given_flag_even_a_default(tmp_path):
    run = tmp_path / "run"
    assert train(run)[0] == 0
    rc, _, err = fr("train", "--resume", "--out", run, "--method", "pgd")     # pgd is the default method
    assert_clean_error(rc, err, "method was 'natural'", "now 'pgd'")
    rc, _, err = fr("train", "--resume", "--out", run, "--seed", "0", "--method", "natural", "--no-progress")
    assert rc == 0, err


@pytest.mark.slow
def test_amp_fp16_on_the_cpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    rc, _, err = train(tmp_path / "run", "--amp", "fp16")
    assert_clean_error(rc, err, "--amp fp16 needs a CUDA GPU", "--amp bf16")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_subset_larger_than_the_data_says_so_and_records_the_real_number(tmp_path):
    run = tmp_path / "run"
    rc, out, err = train(run, "--train-subset", "100000", "--test-subset", "100000", "--method", "natural")
    assert rc == 0, err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    n_train = 6000 - 50     # the shipped subset minus --val-size
    assert cfg["train_subset"] == n_train and cfg["test_subset"] == 1000
    assert f"--train-subset 100000 is more than the {n_train} training examples" in out
    assert f"--train-subset 100000 is more than" in (run / "train.log").read_text()


# ---------------------------------------------------------------- the gap between attacks

def _record(name, ran, correct):
    ran, correct = torch.tensor(ran), torch.tensor(correct)
    return checks.Record(spec_of(name), ran, correct & ran, torch.zeros_like(ran))


def test_attack_gap_flagged_above_the_threshold_only():
    n = 100
    clean = torch.ones(n, dtype=torch.bool)
    pgd_ok = [i < 35 for i in range(n)]                          # PGD leaves 35%
    aa_correct = [i < 18 for i in range(n)]                      # AutoAttack 18% on the same examples
    flags = checks.check_attack_gap([_record("pgd50x10", [True] * n, pgd_ok),
                                     _record("aa", pgd_ok, aa_correct)], clean)
    assert [f["check"] for f in flags] == ["attack_gap"]
    assert "35.0%" in flags[0]["message"] and "18.0%" in flags[0]["message"] and "17.0 points" in flags[0]["message"]
    small = [i < 30 for i in range(n)]                           # 5 points: within the threshold
    assert checks.check_attack_gap([_record("pgd50x10", [True] * n, pgd_ok), _record("aa", pgd_ok, small)], clean) == []


def test_attack_gap_in_evaluate_with_a_model_that_masks_gradients():
    """A model whose input gradient is zero almost everywhere (a quantised input): PGD cannot move,
    the black-box Square attack can, so the worst case falls far below PGD's figure."""
    torch.manual_seed(0)

    class Quantised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[4.0], [-4.0]]))

        def forward(self, x):
            v = torch.round(x.flatten(1).mean(1, keepdim=True) * 4) / 4     # no gradient through round
            return (v - 0.5) @ self.w.T

    x = torch.cat([torch.full((50, 1, 4, 4), 0.3), torch.full((50, 1, 4, 4), 0.7)])
    y = torch.cat([torch.ones(50), torch.zeros(50)]).long()
    with pytest.warns(GradientMaskingWarning, match="attack_gap"):
        result = evaluate(Quantised(), x, y, attacks="clean,pgd10,square100", eps=0.3, progress=False)
    gap = [f for f in result["flags"] if f["check"] == "attack_gap"]
    assert result["attacks"]["pgd10"]["worst_case_accuracy"] - result["robust_accuracy"] > checks.GAP_THRESHOLD
    assert len(gap) == 1 and "square100" in gap[0]["message"]
