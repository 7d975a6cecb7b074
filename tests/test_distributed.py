"""Training with 2 processes (Gloo, CPU) launched by torchrun, as a user would: ``python -m
torch.distributed.run --nproc_per_node=2 --standalone -m fastrobust train ...``.

Each launch costs a few seconds of start-up, so the runs are tiny (a few hundred
MNIST-subset images, 1 thread per process) and shared between tests by a fixture.
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fastrobust
from fastrobust.config import TrainConfig, recipe_step
from fastrobust.engine import load_checkpoint, train
from fastrobust.engine.distributed import Dist, global_batch_sizes, shard_weight
from fastrobust.engine.validation import evaluate_sharded
from fastrobust.engine.prepare import prepare, prepare_for
from fastrobust.errors import ConfigError
from fastrobust.methods import list_methods

WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT_S = 240   # a hang fails the test instead of blocking CI

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def torchrun(args: list[str], cwd: Path, **env_extra: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=2 --standalone ARGS`` in ``cwd``, 1 thread per process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("TORCHELASTIC")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@contextlib.contextmanager
def one_thread():
    """Evaluate with 1 thread, like each worker, so that float results are bit-comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def digest(state_dict: dict) -> str:
    """The digest ``distributed_worker.state_digest`` computes."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the user path: torchrun -m fastrobust train ------------------------------------------

PGD_ARGS = ["--method", "pgd", "--steps", "2", "--epochs", "1", "--train-subset", "300", "--batch-size", "50",
            "--val-size", "100", "--test-subset", "100", "--val-steps", "3", "--test-steps", "3",
            "--eval-batch-size", "30", "--no-progress"]


@pytest.mark.slow
def test_torchrun_matches_one_process_in_cost_and_evaluation(tmp_path):
    proc = torchrun(["-m", "fastrobust", "train", *PGD_ARGS, "--out", "two"], tmp_path)
    assert proc.returncode == 0, output(proc)[-4000:]
    out = tmp_path / "two"
    two = json.loads((out / "summary.json").read_text())
    assert two["world_size"] == 2

    # the same data in one process: the same cost
    cfg = TrainConfig(method="pgd", method_params={"steps": 2}, epochs=1, train_subset=300, batch_size=50, val_size=100,
                      test_subset=100, val_steps=3, test_steps=3, eval_batch_size=30, out=str(tmp_path / "one"))
    one = train(cfg, progress=False, echo=lambda s: None)
    assert two["passes_per_example"] == one["passes_per_example"] == 3.0

    # only the main process writes: every line once
    log = (out / "train.log").read_text()
    finals = log.count("done:") + log.count("warning: the model did not learn")   # 1 epoch of 200 images: either
    assert log.count("epoch 1/1:") == 1 and finals == 1 and "2 processes (Gloo)" in log
    assert len(jsonl(out / "metrics.jsonl")) == 1

    # the 2-process evaluations (sharded: 4 chunks of 30 examples, 2 per process) equal
    # the 1-process evaluation of the same weights
    saved = TrainConfig().update(yaml.safe_load((out / "config.yaml").read_text()), "config.yaml")
    prep = prepare(saved)
    ratio = prep.info.alpha / prep.info.eps
    with one_thread():
        test = evaluate_sharded(fastrobust.load_model(out / "best.pt"), prep.test, Dist(), seed=0, tag="test",
                                eps=saved.eps, steps=3, alpha=recipe_step(saved.eps, 3, ratio), loss="ce",
                                batch_size=30)
        val = evaluate_sharded(fastrobust.load_model(out / "last.pt"), prep.val, Dist(), seed=0, tag="val",
                               eps=saved.eps, steps=3, alpha=recipe_step(saved.eps, 3, ratio), loss="cw",
                               batch_size=30)
    assert (test["clean_acc"], test["robust_acc"]) == (two["test_clean_acc"], two["test_robust_acc"])
    record = jsonl(out / "metrics.jsonl")[0]
    assert (val["clean_acc"], val["robust_acc"]) == (record["val_clean_acc"], record["val_robust_acc"])
    assert test["n"] == 100 and val["n"] == 100


# ---- both processes, seen from inside: distributed_worker.py's mpgd-probe ---------------------

PROBE_ARGS = ["train", "--method", "mpgd-probe", "--k-max", "2", "--epochs", "3", "--train-subset", "200",
              "--batch-size", "50", "--val-size", "100", "--test-subset", "100", "--val-steps", "1", "--test-steps", "1",
              "--eval-batch-size", "50", "--model", "preact-resnet18", "--model-opt", "width=4",
              "--lr-schedule", "constant", "--eps-warmup", "0", "--dist-timeout", "60", "--no-progress"]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """A 3-epoch M+PGD run of 2 processes (a BatchNorm model), with each process's records."""
    root = tmp_path_factory.mktemp("probed")
    (root / "probe").mkdir()
    proc = torchrun([str(WORKER), *PROBE_ARGS, "--out", "run"], root, PROBE_DIR=str(root / "probe"))
    assert proc.returncode == 0, output(proc)[-4000:]
    return root


@pytest.mark.slow
def test_processes_hold_identical_weights_and_take_identical_mplus_decisions(probed_run):
    ranks = [jsonl(probed_run / "probe" / f"rank{r}.jsonl") for r in (0, 1)]
    assert [r["epoch"] for r in ranks[0]] == [0, 1, 2]
    assert ranks[0] == ranks[1]   # weights and BatchNorm statistics (digest), K, MG and threshold, every epoch
    assert ranks[0][0]["next_level"] == 1                      # after epoch 0: +1 unconditionally
    assert ranks[0][1]["state"]["threshold"] is not None and ranks[0][2]["state"]["grad_magnitude"] > 0   # a real M+ test
    out = probed_run / "run"
    assert digest(load_checkpoint(out / "last.pt")["model"]) == ranks[0][-1]["weights"]
    summary = json.loads((out / "summary.json").read_text())
    # passes of both processes counted: (K+1) per example in each epoch, as with one process
    assert summary["passes_per_example"] == pytest.approx(sum(r["state"]["K"] + 1 for r in ranks[0]))
    metrics = jsonl(out / "metrics.jsonl")
    assert [m["K"] for m in metrics] == [r["state"]["K"] for r in ranks[0]]
    assert [m["grad_magnitude"] for m in metrics] == [r["state"]["grad_magnitude"] for r in ranks[0]]


@pytest.mark.slow
def test_every_method_runs_unchanged_with_identical_processes(tmp_path):
    """Each method's probe, 2 epochs in a process group the script made itself (train() joins it)."""
    proc = torchrun([str(WORKER), "all-methods", str(tmp_path)], tmp_path, PROBE_DIR=str(tmp_path))
    assert proc.returncode == 0, output(proc)[-4000:]
    ranks = [jsonl(tmp_path / f"rank{r}.jsonl") for r in (0, 1)]
    methods = {r["method"] for r in ranks[0]}
    assert methods == {cls.name for cls in list_methods() if not cls.name.endswith("-probe")}   # every method
    assert len(ranks[0]) == 2 * len(methods)
    assert ranks[0] == ranks[1]   # per method and epoch: identical weights, method state and next r/K
    for name in methods:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["passes_per_example"] > 0, name


@pytest.mark.slow
def test_per_example_memory_is_every_processs_and_resumes_exactly_under_torchrun(tmp_path):
    """FGSM-PGI keeps a row per training example, each process writing its own examples' rows: the rows are
    exchanged at each epoch's end, so both processes save the same memory, and a run whose process 1 fails in
    epoch 3 resumes to the uninterrupted run's weights and memory. 201 examples in minibatches of 50: the last
    global minibatch (1 example) is trained by no process (its row: the processes' mean, the same on both)."""
    args = [str(WORKER), "train", "--method", "fgsm-pgi-probe", "--epochs", "3", "--train-subset", "201",
            "--batch-size", "50", "--val-size", "100", "--test-subset", "100", "--val-steps", "1", "--test-steps", "1",
            "--eval-batch-size", "50", "--lr-schedule", "constant", "--dist-timeout", "60", "--no-progress"]
    full = torchrun([*args, "--out", "full"], tmp_path, PROBE_DIR=str(tmp_path))
    assert full.returncode == 0, output(full)[-4000:]
    assert torchrun([*args, "--out", "killed"], tmp_path, PROBE_DIR=str(tmp_path), PROBE_FAIL="2,1,1").returncode != 0
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2
    resumed = torchrun([str(WORKER), "train", "--resume", "--out", "killed", "--no-progress"], tmp_path,
                       PROBE_DIR=str(tmp_path))
    assert resumed.returncode == 0, output(resumed)[-4000:]
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("full", "killed"))
    assert digest(a["model"]) == digest(b["model"])
    for ckpt in (a, b):
        mine, other = (rank["method"]["memory"] for rank in ckpt["ranks"])
        assert set(mine) == {"delta", "momentum"} and mine["delta"].shape == (201, 1, 28, 28)
        assert all(torch.equal(mine[k], other[k]) for k in mine)
    assert all(torch.equal(a["method"]["memory"][k], b["method"]["memory"][k]) for k in ("delta", "momentum"))


@pytest.mark.slow
def test_failing_rank_ends_the_job_and_resume_under_torchrun_continues_exactly(probed_run, tmp_path):
    # rank 1 raises at its second batch of the third epoch; rank 0 is then waiting for it in a collective
    proc = torchrun([str(WORKER), *PROBE_ARGS, "--out", "run"], tmp_path, PROBE_DIR=str(tmp_path), PROBE_FAIL="2,1,1")
    assert proc.returncode != 0
    text = output(proc)
    assert "ValueError: bad batch 1 of epoch 2 on rank 1 (injected by the test)" in text
    assert "fastrobust: error: process 0 of 2 lost contact with the others" in text
    out = tmp_path / "run"
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and not (out / "summary.json").exists()

    resumed = torchrun([str(WORKER), "train", "--resume", "--out", "run", "--no-progress"], tmp_path,
                       PROBE_DIR=str(tmp_path))
    assert resumed.returncode == 0, output(resumed)[-4000:]
    assert "resuming run after epoch 2" in (out / "train.log").read_text()
    # the same weights, metrics and summary as the uninterrupted run
    ref = probed_run / "run"
    assert digest(load_checkpoint(out / "last.pt")["model"]) == digest(load_checkpoint(ref / "last.pt")["model"])
    drop = ("epoch_seconds", "train_seconds", "epoch_cpu_seconds", "train_cpu_seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]   # noqa: E731
    assert strip(jsonl(out / "metrics.jsonl")) == strip(jsonl(ref / "metrics.jsonl"))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    for key in ("passes_per_example", "best_epoch", "test_clean_acc", "test_robust_acc", "val_robust_acc"):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_setup_error_is_shown_once_and_every_process_exits(tmp_path):
    proc = torchrun(["-m", "fastrobust", "train", "--method", "pgd", "--batch-size", "51", "--epochs", "1",
                     "--train-subset", "100", "--out", "bad", "--no-progress"], tmp_path)
    assert proc.returncode != 0
    text = output(proc)
    assert text.count("fastrobust: error: --batch-size 51 is the global minibatch, split among 2 processes") == 1
    assert "fastrobust/engine" not in text and "fastrobust/cli.py" not in text   # no traceback from a process


# ---- pieces, in one process ---------------------------------------------------------------

def test_shard_weights_make_the_global_mean_gradient():
    # a last global minibatch of 5 examples split 3 + 2: DDP averages the 2 weighted shard means
    sizes = global_batch_sizes(205, 50)
    assert sizes == [50, 50, 50, 50, 5]
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    shards = [losses[:3], losses[3:]]
    ddp_mean = sum(shard_weight(len(s), 5, 2) * s.mean() for s in shards) / 2
    assert ddp_mean.item() == pytest.approx(losses.mean().item())
    assert shard_weight(25, 50, 2) == 1.0


def test_distributed_checks_name_the_problem_and_fix():
    two = Dist(rank=0, world_size=2)
    base = dict(method="natural", epochs=1, train_subset=100, val_size=50, test_subset=50)
    with pytest.raises(ConfigError, match="must be divisible by 2"):
        prepare_for(TrainConfig(**base, batch_size=51), two, torch.device("cpu"))
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA GPUs"):
        prepare_for(TrainConfig(**base, sync_bn=True), two, torch.device("cpu"))
    assert prepare_for(TrainConfig(**base, sync_bn=True), Dist(), torch.device("cpu")).cfg.sync_bn


def test_single_process_dist_is_the_identity():
    d = Dist()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(d.all_reduce_sum(t), t) and torch.equal(d.all_reduce_max(t), t)
    assert d.agree(lambda: 7) == 7 and d.on_main(lambda: "x") == "x" and d.local_main_first(lambda: 3) == 3
    with pytest.raises(ValueError, match="boom"):
        d.agree(lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert d.gather_objects({"a": torch.ones(1)})[0]["a"].device.type == "cpu"


def test_distributed_options_on_the_command_line_and_their_checks():
    from fastrobust.cli import build_parser, config_from_args
    from fastrobust.config import validate

    cfg = config_from_args(build_parser().parse_args(["train", "--sync-bn", "--dist-timeout", "90"]))
    assert cfg.sync_bn is True and cfg.dist_timeout == 90.0
    assert TrainConfig().sync_bn is False and TrainConfig().dist_timeout == 1800.0
    resolved = prepare_for(TrainConfig(method="natural", epochs=1, train_subset=50, val_size=10, test_subset=10),
                            Dist(), torch.device("cpu")).cfg
    resolved.dist_timeout = 0
    with pytest.raises(ConfigError, match="dist_timeout must be a number of seconds > 0"):
        validate(resolved)


@pytest.mark.slow
def test_weight_averaging_under_torchrun(tmp_path):
    # every process holds the same weights after each step (see the probe test above), so each process's
    # average is the same; the main process validates it and saves it with last.pt
    proc = torchrun(["-m", "fastrobust", "train", *PGD_ARGS, "--wa", "0.9", "--out", "two"], tmp_path)
    assert proc.returncode == 0, output(proc)[-4000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["wa"] == 0.9 and summary["best_weights"] in ("raw", "averaged")
    record = jsonl(tmp_path / "two" / "metrics.jsonl")[0]
    assert record["val_wa_robust_acc"] is not None
    assert load_checkpoint(tmp_path / "two" / "last.pt")["averager"]["updates"] == 6   # 300 / 50 steps
