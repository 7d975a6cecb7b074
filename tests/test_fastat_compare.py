"""benchmarks/fastat_compare.py: its rank statistics against scipy's, and its table of the kept fastat-small
records against the figures of the reference file it reads."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "fastat-benchmark.md"
RECORDS = ROOT / "benchmarks" / "records" / "fastat-small"

spec = importlib.util.spec_from_file_location("fastat_compare", ROOT / "benchmarks" / "fastat_compare.py")
fc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fc)
needs_reference = pytest.mark.skipif(not REFERENCE.is_file(), reason=f"no {REFERENCE} (../shared is absent)")


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlations_match_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(seed)
    x = [rng.choice([18.0, 19.0, 20.0, 21.5, 22.0, 24.6]) for _ in range(12)]
    y = [rng.uniform(40, 51) for _ in range(12)]
    y[3] = y[5]
    assert fc.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert fc.kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert fc.ranks([3.0, 1.0, 3.0, 2.0]) == [1.5, 4.0, 1.5, 3.0]


def test_the_seeds_of_a_run_are_grouped(tmp_path):
    for name, pgd in (("pgd-wa", 0.24), ("pgd-wa-s1", 0.26), ("fgsm-rs-cs", 0.2), ("fgsm-rs-cs-s2", 0.22)):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"passes_per_example": 20, "train_cpu_seconds": 100,
                                                    "best_weights": "averaged"}))
        (d / "eval.json").write_text(json.dumps({"clean_accuracy": 0.3, "robust_accuracy": pgd}))
        (d / "eval-aa.json").write_text(json.dumps({"robust_accuracy": pgd - 0.04}))
    runs = fc.read_runs(tmp_path)
    assert sorted(runs) == ["fgsm-rs-cs", "pgd-wa"]
    assert [r["pgd"] for r in runs["fgsm-rs-cs"]] == pytest.approx([20.0, 22.0])
    assert fc.fmt([20.0, 22.0]) == "21.0 ± 1.4"


@needs_reference
def test_the_benchmark_figures_are_read_from_the_reference_file():
    rows = fc.benchmark_cifar10(REFERENCE)
    assert len(rows) == 21
    assert set(fc.NAMES.values()) <= set(rows)
    assert rows["pgd_at_wa"] == {"clean": 82.4, "pgd50": 54.2, "aa": 50.49, "aa_std": 0.15}


@needs_reference
def test_the_table_of_the_kept_records(capsys):
    assert fc.main([str(RECORDS), "--reference", str(REFERENCE)]) == 0
    out = capsys.readouterr().out
    kept = {p.parent.name.rpartition("-s")[0] if p.parent.name[-1].isdigit() else p.parent.name
            for p in RECORDS.glob("*/eval-aa.json")}
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert {line.split("`")[1] for line in rows} == kept
    liet = next(line for line in rows if line.startswith("| `liet`"))
    assert liet.split("|")[-3].strip() == str(fc.benchmark_cifar10(REFERENCE)["liet"]["aa"])
    assert "Spearman" in out


def test_a_missing_reference_file_is_refused(tmp_path, capsys):
    assert fc.main([str(RECORDS), "--reference", str(tmp_path / "none.md")]) == 2
    assert "--reference" in capsys.readouterr().err


def test_every_benchmark_method_of_the_suite_is_mapped():
    import yaml

    suite = yaml.safe_load((ROOT / "src" / "fastrobust" / "bench" / "suites" / "fastat-small.yaml").read_text())
    ours = {"gaat", "mdeat", "deat-p"}          # the seeds' methods: the benchmark has none of them
    assert set(suite["runs"]) - ours == set(fc.NAMES)
