"""The collapse mark and the guard (--guard) through the engine. The validation accuracies are scripted
(a real collapse on the shipped subset is not deterministic enough to test), everything else is real."""

import json

import pytest
import torch

from fastrobust.cli import main
from fastrobust.engine import load_checkpoint
import fastrobust.engine.trainer as trainer

ROBUST = [0.30, 0.60, 0.05, 0.50, 0.55]     # epoch 3 collapses (below half of 0.60, 55 points under it)
FGSM = [0.35, 0.65, 0.70, 0.55, 0.60]       # while FGSM stays high (catastrophic overfitting, not a divergence)


@pytest.fixture
def scripted(monkeypatch):
    real = trainer._validate
    calls = []

    def validate(run):
        val = real(run)
        calls.append(1)
        return {**val, "robust_acc": ROBUST[len(calls) - 1], "fgsm_acc": FGSM[len(calls) - 1]}

    monkeypatch.setattr(trainer, "_validate", validate)
    return calls


def script_validation(monkeypatch, pairs):
    """Each epoch's validation (robust, FGSM) accuracies from ``pairs``; the clean pass is real."""
    real = trainer._validate
    script = iter(pairs)

    def validate(run):
        robust, fgsm = next(script)
        return {**real(run), "robust_acc": robust, "fgsm_acc": fgsm}

    monkeypatch.setattr(trainer, "_validate", validate)


def run(tmp_path, *extra):
    out = tmp_path / "run"
    code = main(["train", "--method", "fgsm-rs", "--epochs", "5", "--train-subset", "300", "--val-size", "50",
                 "--test-subset", "50", "--val-steps", "2", "--test-steps", "2", "--lr-schedule", "constant",
                 "--no-progress", "--out", str(out), *extra])
    assert code == 0
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return out, metrics, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_without_the_guard_a_collapse_is_marked(tmp_path, scripted):
    out, metrics, summary = run(tmp_path)
    assert summary["collapsed"] is True and summary["collapsed_epoch"] == 3 and summary["guard_events"] == []
    assert not any("guard" in m for m in metrics) and summary["best_epoch"] == 2
    assert summary["passes_per_example"] == pytest.approx(5 * 2)
    log = (out / "train.log").read_text()
    assert ("catastrophic overfitting in epoch 3: validation PGD 5.0% fell from the best of 60.0% while FGSM "
            "stayed at 70.0%; marked only") in log


@pytest.mark.slow
@pytest.mark.parametrize("guard", [False, True])
def test_without_the_guard_a_marked_epoch_stays_a_candidate_for_the_best_checkpoint(tmp_path, monkeypatch, guard):
    """The mark changes nothing in the delivered model: the best validation epoch is kept even when marked (epoch
    2 here: FGSM barely hurts it). With --guard, the guard acts on it (restores, strengthens): not selected."""
    script_validation(monkeypatch, [(0.05, 0.10), (0.20, 0.90), (0.10, 0.15), (0.12, 0.15), (0.11, 0.15)])
    out, metrics, summary = run(tmp_path, *(["--guard"] if guard else []))
    assert summary["collapsed_epoch"] == 2
    assert summary["best_epoch"] == load_checkpoint(out / "best.pt")["epoch"] == (4 if guard else 2)
    assert [e["epoch"] for e in summary["guard_events"]] == ([2] if guard else [])


@pytest.mark.slow
def test_the_guard_restores_the_best_state_and_strengthens_the_attack(tmp_path, scripted):
    out, metrics, summary = run(tmp_path, "--guard")
    event = metrics[2]["guard"]
    assert event["epoch"] == 3 and event["restored_epoch"] == 2 and "attack steps x2" in event["change"]
    assert "guard:" in (out / "train.log").read_text()
    # after the collapse the attack takes 4 steps (2x, at least 4): 5 passes per example instead of 2, all counted
    assert [m["epoch_passes"] for m in metrics] == [2, 2, 2, 5, 5]
    assert metrics[3]["guard_boost"] == 1
    assert summary["collapsed"] is True and summary["guard_events"] == [event]
    assert summary["best_epoch"] == 2 and load_checkpoint(out / "best.pt")["epoch"] == 2   # 0.60 stays the best


@pytest.mark.slow
def test_the_guard_restores_exactly_what_best_pt_holds(tmp_path, scripted, monkeypatch):
    """At the collapse the weights are those of the best epoch (checked on last.pt written at that epoch)."""
    saved = {}
    real_save = trainer.save_epoch

    def save(run, record, improved):
        real_save(run, record, improved)
        saved[record["epoch"]] = {k: v.clone() for k, v in run.raw_model.state_dict().items()}

    monkeypatch.setattr(trainer, "save_epoch", save)
    run(tmp_path, "--guard")
    assert all(torch.equal(saved[3][k], saved[2][k]) for k in saved[2])      # epoch 3 ended on epoch 2's weights
    assert not all(torch.equal(saved[4][k], saved[2][k]) for k in saved[2])  # and training went on from there


@pytest.mark.slow
def test_a_run_far_below_its_fgsm_accuracy_collapsed_even_if_never_robust(tmp_path, monkeypatch):
    """Catastrophic overfitting before any robustness: PGD accuracy near 0 while FGSM's is high."""
    script_validation(monkeypatch, [(0.0, 0.0), (0.0, 0.05), (0.02, 0.80), (0.01, 0.85), (0.0, 0.9)])
    out, metrics, summary = run(tmp_path, "--guard")
    assert summary["collapsed_epoch"] == 3 and [e["epoch"] for e in summary["guard_events"]] == [3, 4, 5]
    assert metrics[2]["val_fgsm_acc"] == 0.80 and metrics[4]["guard_boost"] == 2   # the boost used in epoch 5


@pytest.mark.slow
def test_the_guard_keeps_a_partial_recovery_instead_of_rolling_it_back(tmp_path, monkeypatch):
    """The remembered state is epoch 1 (2% PGD, the best: epoch 2 has 0%). Epoch 3 collapses at 1% (no better):
    restored. Epochs 4 and 5 climb back (9, 19% PGD) but FGSM still barely hurts them: kept, not rolled back, with a
    stronger attack each."""
    script_validation(monkeypatch, [(0.02, 0.03), (0.0, 0.02), (0.01, 0.84), (0.09, 0.84), (0.19, 0.86)])
    saved = {}
    real_save = trainer.save_epoch

    def save(run, record, improved):
        real_save(run, record, improved)
        saved[record["epoch"]] = {k: v.clone() for k, v in run.raw_model.state_dict().items()}

    monkeypatch.setattr(trainer, "save_epoch", save)
    out, metrics, summary = run(tmp_path, "--guard")
    events = summary["guard_events"]
    assert [(e["epoch"], e["restored_epoch"]) for e in events] == [(3, 1), (4, None), (5, None)]
    assert all(e["not_restored"] == {"epoch": 1, "val_robust_acc": 0.02} for e in events[1:])
    assert [m["epoch_passes"] for m in metrics] == [2, 2, 2, 5, 9]          # 4 steps (the floor), then 8
    same = [all(torch.equal(saved[e][k], saved[1][k]) for k in saved[1]) for e in (3, 4, 5)]
    assert same == [True, False, False]                                     # epoch 3 rolled back, 4 and 5 kept
    assert "is clearly below it" in (out / "train.log").read_text()


@pytest.mark.slow
def test_the_guard_acts_from_the_last_warm_up_epoch_and_strengthens_again_while_the_fgsm_gap_stays(
        tmp_path, monkeypatch):
    """--eps-warmup 2: epoch 1 (half eps) is not judged by the FGSM gap, epoch 2 (ends at full eps) is: MNIST
    FGSM-RS had overfit there on 3 seeds (5-15% PGD at 89-95% FGSM). Epoch 3 is the first with the stronger attack
    (not judged: the model adapts); epoch 4 is still 20 points under FGSM (the attack still too weak): strengthened
    again, nothing restored. Epoch 5 closes the gap."""
    script_validation(monkeypatch, [(0.0, 0.50), (0.05, 0.90), (0.55, 0.80), (0.60, 0.80), (0.72, 0.76)])
    out, metrics, summary = run(tmp_path, "--guard", "--eps-warmup", "2")
    events = summary["guard_events"]
    assert [(e["epoch"], e["reason"]) for e in events] == [(2, "collapse"), (4, "weak")]
    assert events[1]["restored_epoch"] is None and "x4" in events[1]["change"]
    assert summary["collapsed_epoch"] == 2
    assert [m["epoch_passes"] for m in metrics] == [2, 2, 5, 5, 9]          # the floor of 4 steps, then 8
    assert "still too weak" in (out / "train.log").read_text()
