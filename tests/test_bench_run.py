"""A real (tiny) benchmark: train, evaluate, report; stopped halfway, it skips finished runs and resumes."""

import csv
import json

import pytest

from fastrobust.bench import load_suite, parse_suite, run_suite
from fastrobust.cli import main
from fastrobust.errors import ConfigError

pytestmark = pytest.mark.slow

SUITE = """\
name: tiny
description: two methods, 2 epochs on 300 images of the shipped MNIST subset
reference: pgd
common: {dataset: mnist-subset, epochs: 2, train_subset: 300, val_size: 100, test_subset: 100, eps: 0.3,
         val_steps: 2, test_steps: 2}
evaluation: {attacks: [clean, pgd3]}
runs:
  natural:
  pgd: {params: {steps: 2}}
  mdeat: {}
"""


class Stop(Exception):
    pass


def test_bench_stopped_halfway_resumes_then_skips(tmp_path):
    out = tmp_path / "bench"
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(SUITE)
    lines = []

    def stop_in_pgd(line):   # "killed" during pgd's 2nd epoch, after its 1st checkpoint
        lines.append(line)
        if line.startswith("epoch 2/2") and (out / "pgd" / "last.pt").is_file():
            raise Stop

    with pytest.raises(Stop):
        run_suite(load_suite(suite_file), out, progress=False, echo=stop_in_pgd)
    assert (out / "natural" / "eval.json").is_file() and not (out / "pgd" / "summary.json").exists()
    natural_mtime = (out / "natural" / "summary.json").stat().st_mtime_ns

    lines.clear()
    written = run_suite(load_suite(suite_file), out, progress=False, echo=lines.append)
    text = "\n".join(lines)
    assert "natural: finished and evaluated: skipped" in text
    assert "pgd (steps 2): resuming the unfinished run" in text and "resuming" in text
    assert (out / "natural" / "summary.json").stat().st_mtime_ns == natural_mtime
    metrics = [json.loads(l) for l in (out / "pgd" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]

    table = list(csv.DictReader(written["csv"].open()))
    assert [r["run"] for r in table] == ["natural", "pgd", "mdeat"]
    assert all(r["accuracy_source"] == "eval.json" and r["test_images"] == "100" for r in table)
    pgd = next(r for r in table if r["run"] == "pgd")
    assert float(pgd["passes_vs_ref"]) == 1.0 and float(pgd["passes_per_example"]) == pytest.approx(6.0)
    assert float(next(r for r in table if r["run"] == "natural")["passes_vs_ref"]) == pytest.approx(2 / 6)
    ev = json.loads((out / "mdeat" / "eval.json").read_text())
    assert float(table[2]["pgd_3_pct"]) == pytest.approx(100 * ev["attacks"]["pgd3"]["worst_case_accuracy"])
    for name in ("results.md", "frontier.png", "val_robust.png", "schedules.png", "suite.yaml", "bench.json"):
        assert (out / name).is_file()
    assert "mdeat" in (out / "results.md").read_text()

    # everything finished: nothing is trained or evaluated again
    lines.clear()
    run_suite(load_suite(suite_file), out, progress=False, echo=lines.append)
    assert sum("skipped" in l for l in lines) >= 3 and not any(l.startswith(("epoch", "evaluated")) for l in lines)

    # asking for another attack re-evaluates, without training
    lines.clear()
    run_suite(parse_suite(SUITE.replace("[clean, pgd3]", "[clean, pgd3, fgsm]"), str(suite_file)), out,
              methods="natural", progress=False, echo=lines.append)
    assert any(l.startswith("evaluated natural") for l in lines) and not any(l.startswith("epoch") for l in lines)
    assert "fgsm" in json.loads((out / "natural" / "eval.json").read_text())["attacks"]

    # a changed suite never mixes with the old results
    with pytest.raises(ConfigError, match="other settings.*epochs was 2, now 3"):
        run_suite(parse_suite(SUITE.replace("epochs: 2", "epochs: 3"), "changed.yaml"), out, progress=False,
                  echo=lines.append)


def test_bench_command_runs_a_user_suite(tmp_path, capsys):
    suite_file = tmp_path / "one.yaml"
    suite_file.write_text(SUITE.replace("  natural:\n", "").replace("  mdeat: {}\n", "")
                          .replace("epochs: 2,", "epochs: 1,"))
    out = tmp_path / "b"
    assert main(["bench", str(suite_file), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "| pgd " in text and "wrote" in text and (out / "results.csv").is_file()
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert "Reference: pgd" in (tmp_path / "again" / "results.md").read_text()


def _benchmark(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engine_overhead_benchmark_runs(capsys):
    ratio = _benchmark("engine_overhead").main(["--steps", "1", "--epochs", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert ratio > 0 and "wall time:" in out and "CPU seconds:" in out and "target >= 0.95" in out
    assert "fastest epoch of each (1 epochs each" in out


def test_pass_costs_benchmark_runs(capsys):
    fractions = _benchmark("pass_costs").main(["--model", "mnist-cnn", "--width", "0", "--dataset", "mnist",
                                               "--batch-size", "8", "--sub-batch", "4", "--repeats", "2"])
    assert fractions["attack pass, batch 8"] == 1.0
    assert all(v > 0 for v in fractions.values()) and "per example refreshed" in capsys.readouterr().out


SEEDED = """\
name: tiny-seeds
description: two methods, 2 epochs on 200 images of the shipped MNIST subset
reference: pgd
common: {dataset: mnist-subset, epochs: 2, train_subset: 200, val_size: 100, test_subset: 100, eps: 0.3,
         val_steps: 2, test_steps: 2}
evaluation: {attacks: [clean, pgd3], test_subset: 60}
runs:
  natural:
  pgd: {params: {steps: 2}}
"""


def test_bench_with_two_seeds_adopts_resumes_and_reports_mean_and_std(tmp_path, capsys):
    import statistics

    out = tmp_path / "bench"
    suite_file = tmp_path / "seeds.yaml"
    suite_file.write_text(SEEDED)
    run_suite(load_suite(suite_file), out, progress=False, echo=lambda line: None)       # seed 0 only: as before
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["natural", "pgd"]
    pgd_mtime = (out / "pgd" / "summary.json").stat().st_mtime_ns

    lines = []

    def stop_in_pgd_s1(line):   # "killed" during the 2nd epoch of pgd's seed 1, after its 1st checkpoint
        lines.append(line)
        if line.startswith("epoch 2/2") and (out / "pgd-s1" / "last.pt").is_file():
            raise Stop

    with pytest.raises(Stop):
        run_suite(load_suite(suite_file), out, seeds="2", progress=False, echo=stop_in_pgd_s1)
    text = "\n".join(lines)
    assert "natural, seed 0 (natural): finished and evaluated: skipped" in text
    assert "pgd (steps 2), seed 0 (pgd): finished and evaluated: skipped" in text
    assert (out / "natural-s1" / "eval.json").is_file() and not (out / "pgd-s1" / "summary.json").exists()

    assert main(["bench", str(suite_file), "--out", str(out), "--seeds", "0,1", "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "pgd (steps 2), seed 1 (pgd-s1): resuming the unfinished run" in text
    assert (out / "pgd" / "summary.json").stat().st_mtime_ns == pgd_mtime
    for run in ("natural", "pgd"):
        seeds = [json.loads((out / d / "summary.json").read_text())["seed"] for d in (run, f"{run}-s1")]
        assert seeds == [0, 1]
    assert json.loads((out / "bench.json").read_text())["seeds"] == [0, 1]

    table = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["run"], r["seed"], r["run_dir"].rsplit("/", 1)[1]) for r in table] == [
        ("natural", "0", "natural"), ("natural", "1", "natural-s1"), ("pgd", "0", "pgd"), ("pgd", "1", "pgd-s1")]
    for r in table:
        ev = json.loads((tmp_path / "bench" / r["run_dir"].rsplit("/", 1)[1] / "eval.json").read_text())
        assert ev["n"] == 60 and float(r["pgd_3_pct"]) == pytest.approx(100 * ev["attacks"]["pgd3"]["worst_case_accuracy"])
    md = (out / "results.md").read_text()
    assert "Command: `fastrobust bench" in md and "--seeds 0,1`" in md
    header = next(l for l in md.splitlines() if l.startswith("| run"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    for run in ("natural", "pgd"):
        cell = dict(zip(cols, [c.strip() for c in next(l for l in md.splitlines() if l.startswith(f"| {run} "))
                               .strip("|").split("|")]))
        assert cell["n seeds"] == "2"
        for col, key in (("PGD-3 %", "pgd_3_pct"), ("train s", "train_seconds"), ("passes/ex", "passes_per_example")):
            values = [float(r[key]) for r in table if r["run"] == run]
            m, s = statistics.fmean(values), statistics.stdev(values)
            shown = (f"{m:.1f} ± {s:.1f}" if col.endswith("%") or col == "passes/ex"
                     else f"{m:.0f} ± {s:.0f}" if m >= 100 else f"{m:.1f} ± {s:.1f}")
            assert cell[col] == shown
    assert "Several seeds (seeds 0, 1)" in md

    # everything done: the same command trains and evaluates nothing; the report of the folder is the same table
    assert main(["bench", str(suite_file), "--out", str(out), "--seeds", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.count("finished and evaluated: skipped") == 8 and "\nepoch" not in text
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "results.md").read_text()
    table_of = lambda text: [l for l in text.splitlines() if l.startswith("|")]
    assert table_of(again) == table_of(md) and len(table_of(md)) == 4


def test_aa_subset_adds_autoattack_on_its_own_images_to_finished_runs(tmp_path, capsys):
    """--aa with a suite's aa_subset: AutoAttack on the first N test images into eval-aa.json, added to runs
    already trained and evaluated (their eval.json untouched), then skipped; the table has its column."""
    pytest.importorskip("pyautoattack")
    out = tmp_path / "bench"
    suite_file = tmp_path / "aa.yaml"
    suite_file.write_text(SEEDED.replace("test_subset: 60}", "test_subset: 60, aa_subset: 20}"))
    assert main(["bench", str(suite_file), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert not (out / "pgd" / "eval-aa.json").exists()
    stamp = {run: (out / run / "eval.json").stat().st_mtime_ns for run in ("natural", "pgd")}
    capsys.readouterr()

    assert main(["bench", str(suite_file), "--out", str(out), "--no-progress", "--aa"]) == 0
    text = capsys.readouterr().out
    assert "AutoAttack on the first 20" in text and text.count("trained; evaluating") == 4
    for run in ("natural", "pgd"):
        aa = json.loads((out / run / "eval-aa.json").read_text())
        assert aa["n"] == 20 and list(aa["attacks"]) == ["clean", "aa"]
        assert (out / run / "eval.json").stat().st_mtime_ns == stamp[run]
    md = (out / "results.md").read_text()
    assert "AutoAttack (20) %" in md and "--aa" in md

    assert main(["bench", str(suite_file), "--out", str(out), "--no-progress", "--aa"]) == 0
    assert capsys.readouterr().out.count("finished and evaluated: skipped") == 4
