"""README's demo table is the output of today's ``fastrobust demo`` (benchmarks/demo_readme.py --write
regenerates it): compared on the columns that do not depend on the machine (accuracies, passes)."""

import importlib.util
from pathlib import Path

import pytest

from fastrobust.demo import AA_EXAMPLES, DEFAULT_METHODS, RECIPE, format_table, table_drift, table_rows

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "demo_readme.py"


def script():
    spec = importlib.util.spec_from_file_location("demo_readme", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_the_current_recipe():
    """Cheap drift checks (no training): the methods, epochs and AutoAttack subset of today's demo."""
    table = script().readme_table()
    rows = table_rows(table)
    assert [r["method"] for r in rows] == list(DEFAULT_METHODS)
    assert {r["epochs"] for r in rows} == {str(RECIPE.epochs)}
    assert f"L-inf eps {RECIPE.eps:g}," in table and f"on {AA_EXAMPLES} of the test images" in table
    assert not any("collapsed" in r["method"] for r in rows)


def test_table_drift_compares_the_deterministic_columns_only():
    summary = {"method": "pgd", "epochs": 4, "test_clean_acc": 0.946, "test_robust_acc": 0.819, "aa_acc": 0.82,
               "aa_examples": 50, "passes_per_example": 44.0, "train_seconds": 45.0, "train_cpu_seconds": 30.0, "test_examples": 1000,
               "test_attack": "PGD-20"}
    table = format_table([summary])
    assert table_drift(table, format_table([{**summary, "train_seconds": 20.0, "train_cpu_seconds": 10.0}])) == []
    assert table_drift(table, format_table([{**summary, "test_robust_acc": 0.818}])) == ["pgd, PGD-20 %: 81.9 != 81.8"]
    assert table_drift(table, format_table([{**summary, "method": "gaat"}]))[0].startswith("methods:")
    assert table_drift(table, "no table") == ["no table in the demo's output"]


@pytest.mark.slow
def test_readme_demo_table_matches_the_demo(tmp_path):
    """The whole demo (about 2 minutes on an idle 2-core machine): README's table is its output."""
    lines = []
    table = script().demo_table(out=str(tmp_path / "demo"), echo=lines.append)
    assert not any("catastrophic overfitting" in line for line in lines)     # no collapse in this setting
    assert table_drift(script().readme_table(), table) == []
