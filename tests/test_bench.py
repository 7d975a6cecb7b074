"""Benchmark suites (loading, validation) and the report (table, CSV, plots) from run directories."""

import csv
import json
from pathlib import Path

import pytest

from fastrobust.bench import collect, load_suite, parse_suite, pick_reference, shipped_suites, write_report
from fastrobust.bench.results import notes
from fastrobust.bench.suite import config_differences
from fastrobust.cli import main
from fastrobust.errors import ConfigError, FastrobustError
from fastrobust.methods import list_methods

PNG = b"\x89PNG\r\n\x1a\n"

TINY = """\
name: tiny
reference: pgd
common: {dataset: mnist-subset, epochs: 2, eps: 0.3}
evaluation: {attacks: [clean, pgd5]}
runs:
  natural:
  pgd: {params: {steps: 2}}
  free-2: {method: free, params: {replays: 2}}
"""


def test_shipped_suites_load_and_cover_every_method():
    names = shipped_suites()
    assert {"mnist-quick", "mnist", "cifar10-small", "cifar10-deat", "cifar100-deat", "imagenet-deat"} <= set(names)
    registered = {cls.name for cls in list_methods()}
    for name in names:
        suite = load_suite(name)
        assert suite.name == name and suite.description and suite.reference in [r.name for r in suite.runs]
        # PGD-AT is the reference, except on ImageNet, where the DEAT paper trained no PGD-AT model (Free-4)
        assert suite.run(suite.reference).method == ("free" if name == "imagenet-deat" else "pgd")
    for name in ("mnist-quick", "mnist"):
        assert {r.method for r in load_suite(name).runs} == registered


def test_mnist_suite_matches_the_reference_runs():
    suite = load_suite("mnist")
    assert suite.common == {"dataset": "mnist", "model": "mnist-cnn", "eps": 0.3, "epochs": 10, "eps_warmup": 2,
                            "test_subset": 1000, "seed": 0}
    assert suite.attacks == ["clean", "pgd50x10"] and suite.test_subset == 1000
    pgd = suite.run("pgd")
    assert pgd.params == {"steps": 40} and pgd.config == {"alpha": 0.01}
    assert suite.run("mpgd").params == {} and suite.run("mpgd").config == {}   # the paper's K_max 7, default step
    assert suite.run("mdeat").params == {} and suite.run("free").params == {}
    cfg = suite.train_config(pgd, "x", data_dir="/data")
    assert (cfg.method, cfg.epochs, cfg.lr, cfg.optimizer, cfg.data_dir, cfg.out) == ("pgd", 10, None, None, "/data", "x")


def test_cifar_suites_use_the_paper_schedule():
    suite = load_suite("cifar10-deat")
    assert suite.common["lr_milestones"] == [25, 40] and suite.common["eps"] == pytest.approx(8 / 255)
    assert suite.run("mdeat").config["alpha"] == pytest.approx(10 / 255)
    assert "aa" in suite.attacks
    assert load_suite("cifar100-deat").common["dataset"] == "cifar100"
    small = load_suite("cifar10-small")
    assert small.common["dataset"] == "imagefolder" and small.common["model_options"] == {"width": 16}


@pytest.mark.parametrize("text, words", [
    (TINY.replace("  natural:\n", "  natrual:\n"), ["natrual", "unknown method", "Available methods"]),
    (TINY.replace("name: tiny", "name: tiny\nrefernce: pgd"), ["unknown top-level key", "refernce", "Allowed"]),
    (TINY.replace("reference: pgd\n", ""), ["missing 'reference'", "compared with"]),
    (TINY.replace("reference: pgd", "reference: pgd-7"), ["reference 'pgd-7'", "natural, pgd, free-2"]),
    (TINY.replace("epochs: 2,", "epochs: 2, method_params: {steps: 3},"), ["'common'", "method_params", "each run"]),
    (TINY.replace("{params: {steps: 2}}", "{params: {steps: 2}, eps: 0.2}"), ["run 'pgd'", "'eps'", "common"]),
    (TINY.replace("{steps: 2}", "{stepz: 2}"), ["run 'pgd'", "stepz", "--steps"]),
    (TINY.replace("{steps: 2}", "{steps: -1}"), ["run 'pgd'", "steps", ">= 1"]),
    (TINY.replace("{params: {steps: 2}}", "{params: {steps: 2}, alpha: 0.5}"), ["run 'pgd'", "alpha", "eps"]),
    (TINY.replace("pgd5", "pgd5x"), ["unknown attack", "pgd5x"]),
    (TINY.replace("dataset: mnist-subset", "dataset: mnist-big"), ["unknown dataset", "mnist-big"]),
    (TINY.replace("free-2:", "free 2:"), ["run name", "free 2"]),
    (TINY.replace("eps: 0.3", "eps: 3/0"), ["eps", "8/255"]),
    (TINY.replace("reference: pgd", "reference: pgd\nseeds: 0"), ["seeds", "not a number of seeds", "0,2,5"]),
    (TINY.replace("reference: pgd", "reference: pgd\nseeds: [0, 1, 0]"), ["seeds", "seed 0 is given twice"]),
    (TINY.replace("reference: pgd", "reference: pgd\nseeds: [0, -1]"), ["seeds", "-1", "integer >= 0"]),
    (TINY.replace("eps: 0.3", "eps: 0.3, seed: one"), ["common.seed", "integer"]),
    (TINY.replace("reference: pgd", "reference: pgd\nseeds: 2").replace("  natural:\n", "  pgd-s1: {method: natural}\n"),
     ["run 'pgd-s1'", "folder of run 'pgd' with seed 1", "rename"]),
    ("runs: [a, b", ["not valid YAML"]),
    ("- a\n- b\n", ["must be a mapping"]),
])
def test_bad_suites_are_refused_with_the_fix(text, words):
    with pytest.raises(ConfigError) as err:
        parse_suite(text, "my.yaml")
    assert "my.yaml" in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_load_suite_by_name_or_path(tmp_path):
    with pytest.raises(ConfigError, match="unknown suite 'mnist-quik'.*mnist-quick"):
        load_suite("mnist-quik")
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "none.yaml")
    (tmp_path / "t.yaml").write_text(TINY)
    suite = load_suite(tmp_path / "t.yaml")
    assert [r.name for r in suite.runs] == ["natural", "pgd", "free-2"] and suite.run("free-2").method == "free"


def test_select_always_keeps_the_reference():
    suite = parse_suite(TINY)
    runs, notes = suite.select("free")
    assert [r.name for r in runs] == ["pgd", "free-2"] and "reference" in notes[0]
    assert [r.name for r in suite.select(None)[0]] == ["natural", "pgd", "free-2"]
    with pytest.raises(ConfigError, match="'mdeat' is not a run"):
        suite.select("mdeat,natural")


def test_changed_settings_are_detected():
    suite = parse_suite(TINY)
    saved = suite.train_config(suite.run("pgd"))
    from fastrobust.config import resolve
    from fastrobust.data import DATASETS
    from fastrobust.methods import get_method

    saved = resolve(saved, DATASETS["mnist-subset"], get_method("pgd")).to_dict()
    assert config_differences(suite.train_config(suite.run("pgd"), "elsewhere", device="cpu"), saved) == []
    changed = parse_suite(TINY.replace("epochs: 2", "epochs: 3"))
    assert config_differences(changed.train_config(changed.run("pgd")), saved)[0] == "epochs was 2, now 3"


# --------------------------------------------------------------------------- report from run dirs
def _run_dir(path, method, passes, seconds, clean, robust, evaluation=None, metrics_extra=None):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "method": method, "epochs": 2, "passes_per_example": passes, "train_seconds": seconds,
        "train_cpu_seconds": 2 * seconds, "torch_threads": 2, "device": "cpu", "test_clean_acc": clean,
        "test_robust_acc": robust, "test_attack": "PGD-20 CE, eps 0.3, alpha 0.0375, 1 restart",
        "test_examples": 100}))
    lines = [{"epoch": e, "val_robust_acc": robust * e / 2, "epoch_passes": passes / 2, **(metrics_extra or {})}
             for e in (1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    if evaluation is not None:
        pgd, aa = evaluation
        (path / "eval.json").write_text(json.dumps({
            "n": 100, "eps": 0.3, "norm": "linf", "clean_accuracy": clean, "robust_accuracy": aa, "cascade": True,
            "attacks": {"clean": {"accuracy": clean, "worst_case_accuracy": clean},
                        "pgd50x10": {"accuracy": pgd, "worst_case_accuracy": pgd,
                                     "settings": {"attack": "PGD-50 CE x 10 restarts", "alpha": 0.01}},
                        "aa": {"accuracy": 0.9, "worst_case_accuracy": aa, "settings": {"attack": "AutoAttack"}}},
            "flags": [{"check": "square", "message": "Square beat the white-box attacks"}] if method == "free" else []}))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _run_dir(root / "pgd", "pgd", 22.0, 40.0, 0.90, 0.60, (0.62, 0.60))
    _run_dir(root / "mdeat", "mdeat", 11.0, 20.0, 0.92, 0.55, (0.58, 0.555), {"r": 2})
    _run_dir(root / "free", "free", 8.0, 16.0, 0.91, 0.50, None)
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("method: pgd\n")   # started, no summary yet
    return root


@pytest.mark.slow
def test_report_table_csv_and_plots(runs, tmp_path):
    rows, unfinished, _ = collect([runs / "pgd", runs / "mdeat", runs / "free", runs / "broken"])
    assert [r.name for r in rows] == ["pgd", "mdeat", "free"] and unfinished == [str(runs / "broken")]
    ref = pick_reference(rows, None)
    assert ref.name == "pgd"
    written = write_report(rows, tmp_path / "rep", ref, unfinished)
    for key in ("frontier", "val_robust", "schedules"):
        assert written[key].read_bytes()[:8] == PNG
    md = written["md"].read_text()
    assert "| mdeat " in md and "free †" in md and "no eval.json" in md and "Not finished" in md
    assert "WARNING" not in md and "±" not in md and "n seeds" not in md   # one seed each: no spread shown
    table = {r["run"]: r for r in csv.DictReader(written["csv"].open())}
    m = table["mdeat"]
    assert float(m["passes_vs_ref"]) == pytest.approx(0.5) and float(m["time_vs_ref"]) == pytest.approx(0.5)
    assert float(m["cpu_time_vs_ref"]) == pytest.approx(0.5)
    assert float(m["autoattack_pct"]) == pytest.approx(55.5) and float(m["d_autoattack_pts"]) == pytest.approx(-4.5)
    assert float(m["d_pgd_50x10_pts"]) == pytest.approx(-4.0) and float(m["d_clean_pts"]) == pytest.approx(2.0)
    f = table["free"]
    assert f["accuracy_source"] == "summary.json" and f["autoattack_pct"] == ""
    assert float(f["clean_pct"]) == pytest.approx(91.0)
    assert float(f["pgd_20_ce_summary_json_pct"]) == pytest.approx(50.0)


@pytest.mark.slow
def test_report_command(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["report", str(runs / "pgd"), str(runs / "mdeat"), "--out", str(out), "--reference", "mdeat"]) == 0
    text = capsys.readouterr().out
    assert "Reference: mdeat" in text and (out / "results.csv").is_file() and (out / "frontier.png").is_file()
    assert main(["report", str(runs / "pgd"), "--reference", "trades", "--out", str(out)]) == 2
    assert "--reference 'trades' is none of the runs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no runs" in capsys.readouterr().err


@pytest.mark.slow
def test_report_of_a_bench_folder_uses_its_reference(runs, tmp_path):
    (runs / "bench.json").write_text(json.dumps({"suite": "x", "reference": "mdeat", "runs": ["mdeat", "pgd"]}))
    rows, unfinished, suggested = collect([runs])
    assert [r.name for r in rows][:2] == ["mdeat", "pgd"] and suggested == "mdeat"
    assert pick_reference(rows, None, suggested).name == "mdeat"
    assert main(["report", str(runs)]) == 0 and (runs / "results.md").is_file()


def test_flags_of_the_evaluation_are_shown(runs, tmp_path):
    (runs / "free" / "eval.json").write_text((runs / "pgd" / "eval.json").read_text().replace(
        '"flags": []', '"flags": [{"check": "square", "message": "Square beat PGD"}]'))
    rows, _, _ = collect([runs / "pgd", runs / "free"])
    assert "WARNING (free): square: Square beat PGD" in notes(rows, rows[0], [])


def test_bench_command_line_errors(capsys, tmp_path):
    assert main(["bench"]) == 2
    assert "name a suite" in capsys.readouterr().err
    assert main(["bench", "nosuch"]) == 2
    assert "unknown suite 'nosuch'" in capsys.readouterr().err
    assert main(["bench", "--list"]) == 0
    assert "mnist-quick" in capsys.readouterr().out
    assert main(["bench", "mnist-quick", "--methods", "nosuch", "--dry-run"]) == 2
    assert "'nosuch' is not a run of suite 'mnist-quick'" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    assert main(["bench", "mnist-quick", "--methods", "natural", "--out", str(tmp_path / "other")]) == 2
    assert "not a `fastrobust bench` output folder" in capsys.readouterr().err


def test_dry_run_shows_the_plan_and_writes_nothing(capsys, tmp_path):
    assert main(["bench", "mnist-quick", "--dry-run", "--out", str(tmp_path / "b"), "--methods", "mdeat"]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and "pgd (steps 10): training" in out and "mdeat: training" in out
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_accuracies_on_other_test_images_are_not_compared(runs, tmp_path):
    path = runs / "mdeat" / "eval.json"
    path.write_text(path.read_text().replace('"n": 100', '"n": 50'))
    rows, _, _ = collect([runs / "pgd", runs / "mdeat"])
    written = write_report(rows, tmp_path / "r", rows[0])
    m = {r["run"]: r for r in csv.DictReader(written["csv"].open())}["mdeat"]
    assert m["test_n"] == "50" and m["d_clean_pts"] == "" and m["d_autoattack_pts"] == ""
    assert float(m["passes_vs_ref"]) == pytest.approx(0.5)
    assert "different numbers of test images" in written["md"].read_text()


def test_a_folder_of_runs_named_after_the_suite_is_adopted(tmp_path):
    from fastrobust.bench.runner import _prepare_out

    suite = load_suite("mnist-quick")
    out = tmp_path / "runs"
    (out / "natural").mkdir(parents=True)
    (out / "natural" / "config.yaml").write_text("method: natural\n")
    (out / "natural-s2").mkdir()                   # another seed's folder of a suite's run
    (out / "natural-s2" / "config.yaml").write_text("method: natural\nseed: 2\n")
    _prepare_out(out, suite)                       # only run folders of the suite: accepted
    (out / "notes").mkdir()
    with pytest.raises(FastrobustError, match="holds notes"):
        _prepare_out(out, suite)


def test_a_method_parameter_newer_than_a_run_counts_as_its_default():
    from fastrobust.config import TrainConfig

    requested = TrainConfig(method="gaat", dataset="mnist-subset", method_params={"steps": 5})
    saved = dict(requested.to_dict(), method_params={"steps": 5, "tau": 0.3, "check_every": 2, "order": 1,
                                                     "attack_eval": False})      # saved before check_graph existed
    from fastrobust.bench.suite import config_differences as diff
    from fastrobust.config import resolve
    from fastrobust.data import DATASETS
    from fastrobust.methods import get_method

    resolved = resolve(requested, DATASETS["mnist-subset"], get_method("gaat")).to_dict()
    saved = {**resolved, "method_params": saved["method_params"]}
    assert diff(requested, saved) == []
    saved["method_params"] = {**saved["method_params"], "tau": 0.5}
    assert any("method_params" in d for d in diff(requested, saved))


def test_an_m_plus_run_saved_before_step_rule_had_the_eps_over_k_step_not_todays_default():
    # a run saved before `step_rule` existed stepped eps/K; today's default (constant alpha) would be
    # another training, so bench must not adopt it as one
    from fastrobust.bench.suite import config_differences as diff
    from fastrobust.config import TrainConfig, resolve
    from fastrobust.data import DATASETS
    from fastrobust.methods import get_method

    requested = TrainConfig(method="mpgd", dataset="mnist-subset")
    resolved = resolve(requested, DATASETS["mnist-subset"], get_method("mpgd")).to_dict()
    old = {k: v for k, v in resolved["method_params"].items() if k != "step_rule"}
    assert resolved["method_params"]["step_rule"] == "constant"
    assert any("method_params" in d and "eps-over-k" in d for d in diff(requested, {**resolved, "method_params": old}))
    asked_old = TrainConfig(method="mpgd", dataset="mnist-subset", method_params={"step_rule": "eps-over-k"})
    assert diff(asked_old, {**resolved, "method_params": old}) == []


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("value, base, seeds", [
    ("3", 0, [0, 1, 2]), (3, 0, [0, 1, 2]), ("0,2", 0, [0, 2]), (" 5 , 1 ", 0, [5, 1]), ("4,", 0, [4]),
    ("2", 7, [7, 8]), ([3, 1], 0, [3, 1]), ("1", 0, [0]),
])
def test_seeds_are_a_count_or_a_list(value, base, seeds):
    from fastrobust.bench import parse_seeds

    assert parse_seeds(value, base) == seeds


@pytest.mark.parametrize("value, words", [
    ("0", ["0 is not a number of seeds", "at least 1", "S,"]), ("-2", ["at least 1"]), ("three", ["'three'"]),
    ("1.5", ["'1.5'"]), ("1,1", ["seed 1 is given twice"]), ("0,,2", ["empty entry"]), (",", ["empty entry"]),
    ("0,x", ["seed 'x'"]), ("0,-3", ["seed '-3'", ">= 0"]), ([], ["no seeds"]), (True, ["True"]), ([0.5], ["0.5"]),
])
def test_bad_seeds_are_refused_with_the_fix(value, words):
    from fastrobust.bench import parse_seeds

    with pytest.raises(ConfigError) as err:
        parse_seeds(value, 0, "--seeds")
    text = str(err.value)
    assert text.startswith("--seeds: ") and "such as 3 (seeds 0, 1, 2)" in text and "0,2,5" in text
    for w in words:
        assert w in text


def test_seeds_on_the_command_line(capsys, tmp_path):
    out = tmp_path / "b"
    assert main(["bench", "mnist-quick", "--methods", "mdeat", "--seeds", "0,0", "--dry-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrobust: error: --seeds: seed 0 is given twice") and "Traceback" not in err
    assert main(["bench", "mnist-quick", "--methods", "mdeat", "--seeds", "x", "--out", str(out)]) == 2
    assert "'x' is not a number of seeds" in capsys.readouterr().err and not out.exists()
    assert main(["bench", "mnist-quick", "--methods", "mdeat", "--seeds", "2", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 runs (2 runs x 2 seeds: 0, 1)" in text
    lines = [l.strip() for l in text.splitlines() if l.strip().startswith("[")]
    assert lines == ["[1/4] pgd (steps 10), seed 0 (pgd): training", "[2/4] mdeat, seed 0 (mdeat): training",
                     "[3/4] pgd (steps 10), seed 1 (pgd-s1): training", "[4/4] mdeat, seed 1 (mdeat-s1): training"]
    assert main(["bench", "mnist-quick", "--methods", "mdeat", "--seeds", "3,", "--dry-run", "--out", str(out)]) == 0
    assert "[2/2] mdeat, seed 3 (mdeat-s3): training" in capsys.readouterr().out


def test_a_suite_gives_its_default_seeds():
    suite = parse_suite(TINY.replace("reference: pgd", "reference: pgd\nseeds: 3"))
    assert suite.seeds == [0, 1, 2] and suite.resolve_seeds() == [0, 1, 2] and suite.resolve_seeds("5,") == [5]
    assert [suite.folder("pgd", s) for s in (0, 1, 12)] == ["pgd", "pgd-s1", "pgd-s12"]
    assert parse_suite(TINY).resolve_seeds() == [0]
    own = parse_suite(TINY.replace("eps: 0.3", "eps: 0.3, seed: 4").replace("reference: pgd", "reference: pgd\nseeds: 2"))
    assert own.seeds == [4, 5] and own.folder("pgd", 4) == "pgd" and own.folder("pgd", 0) == "pgd-s0"
    assert own.owns_folder("free-2-s7") and own.owns_folder("natural") and not own.owns_folder("pgd-x1")
    cfg = suite.train_config(suite.run("pgd"), "x", seed=2)
    assert cfg.seed == 2 and suite.train_config(suite.run("pgd")).seed == 0


def _seed_run(root, folder, method, seed, passes, seconds, clean, pgd, aa, steps=2):
    _run_dir(root / folder, method, passes, seconds, clean, aa, (pgd, aa), {"K": steps + seed})
    config = {"method": method, "dataset": "mnist-subset", "epochs": 2, "eps": 0.3, "method_params": {"steps": steps},
              "seed": seed, "out": str(root / folder), "device": "auto"}
    import yaml

    (root / folder / "config.yaml").write_text(yaml.safe_dump(config))


# per run: seed -> (passes, seconds, clean, pgd50x10, aa)
SEEDED = {
    "pgd": {0: (22.0, 40.0, 0.90, 0.62, 0.60), 1: (22.0, 44.0, 0.88, 0.58, 0.56), 2: (22.0, 42.0, 0.92, 0.63, 0.61)},
    "mdeat": {0: (11.0, 20.0, 0.91, 0.57, 0.55), 1: (12.0, 21.0, 0.93, 0.55, 0.53)},
}


@pytest.fixture
def seeded(tmp_path):
    root = tmp_path / "seeded"
    for run, by_seed in SEEDED.items():
        for seed, values in by_seed.items():
            _seed_run(root, run if seed == 0 else f"{run}-s{seed}", run, seed, *values)
    return root


def _mean_std(values):
    import statistics

    return statistics.fmean(values), statistics.stdev(values)


@pytest.mark.slow
def test_seeds_of_a_run_become_one_row_with_mean_and_std(seeded, tmp_path):
    from fastrobust.bench import SeedGroup, group_runs

    rows, _, _ = collect([seeded])
    items = group_runs(rows)
    assert [(type(i).__name__, i.name) for i in items] == [("SeedGroup", "mdeat"), ("SeedGroup", "pgd")]
    pgd = items[1]
    assert isinstance(pgd, SeedGroup) and pgd.seeds == [0, 1, 2] and pgd.n_seeds == 3
    mean, std = _mean_std([v[4] for v in SEEDED["pgd"].values()])
    assert pgd.robust == pytest.approx(mean) and pgd.robust.std == pytest.approx(std) and pgd.robust.n == 3
    assert pgd.metrics == [{"epoch": 1, "K": 3.0, "epoch_passes": 11.0, "val_robust_acc": pytest.approx(mean / 2)},
                           {"epoch": 2, "K": 3.0, "epoch_passes": 11.0, "val_robust_acc": pytest.approx(mean)}]

    written = write_report(rows, tmp_path / "rep", pick_reference(rows, None))
    md = written["md"].read_text()
    header = next(l for l in md.splitlines() if l.startswith("| run"))
    assert "| n seeds |" in header
    line = next(l for l in md.splitlines() if l.startswith("| pgd "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    cols = [c.strip() for c in header.strip("|").split("|")]
    cell = dict(zip(cols, cells))
    assert cell["n seeds"] == "3"
    for col, i in (("clean %", 2), ("PGD-50x10 %", 3), ("AutoAttack %", 4)):
        m, s = _mean_std([v[i] for v in SEEDED["pgd"].values()])
        assert cell[col] == f"{100 * m:.1f} ± {100 * s:.1f}"
    m, s = _mean_std([v[1] for v in SEEDED["pgd"].values()])
    assert cell["train s"] == f"{m:.1f} ± {s:.1f}" and cell["passes/ex"] == "22.0 ± 0.0"
    assert cell["CPU s"] == f"{2 * m:.1f} ± {2 * s:.1f}"
    md_line = dict(zip(cols, [c.strip() for c in next(l for l in md.splitlines() if l.startswith("| mdeat "))
                              .strip("|").split("|")]))
    aa_m = _mean_std([v[4] for v in SEEDED["mdeat"].values()])[0]
    assert md_line["n seeds"] == "2" and md_line["d AutoAttack (pts)"] == f"{100 * (aa_m - mean):+.1f}"
    assert float(md_line["time / ref"]) == pytest.approx(20.5 / 42.0, abs=0.006)
    assert "Several seeds (mdeat: seeds 0, 1; pgd: seeds 0, 1, 2)" in md
    assert "no measurable difference" in md

    table = list(csv.DictReader(written["csv"].open()))
    assert [(r["run"], r["seed"]) for r in table] == [("mdeat", "0"), ("mdeat", "1"), ("pgd", "0"), ("pgd", "1"),
                                                      ("pgd", "2")]
    assert [r["run_dir"].rsplit("/", 1)[1] for r in table] == ["mdeat", "mdeat-s1", "pgd", "pgd-s1", "pgd-s2"]
    for r in table:
        values = SEEDED[r["run"]][int(r["seed"])]
        assert float(r["autoattack_pct"]) == pytest.approx(100 * values[4])
        assert float(r["train_seconds"]) == pytest.approx(values[1])
        assert float(r["d_autoattack_pts"]) == pytest.approx(100 * (values[4] - mean))   # against the ref's mean
    assert "n_seeds" not in table[0]


def test_one_seed_of_a_run_and_repeated_seeds_stay_plain_rows(seeded, tmp_path):
    from fastrobust.bench import group_runs

    rows, _, _ = collect([seeded / "pgd", seeded / "mdeat-s1"])
    assert [type(i).__name__ for i in group_runs(rows)] == ["Row", "Row"]
    md = write_report(rows, tmp_path / "one", rows[0])["md"].read_text()
    assert "±" not in md and "n seeds" not in md and "Several seeds" not in md
    # the same seed twice (say, the same run on two machines) is not a spread over seeds
    import shutil

    shutil.copytree(seeded / "pgd", tmp_path / "again" / "pgd")
    rows, _, _ = collect([seeded / "pgd", tmp_path / "again" / "pgd"])
    assert [type(i).__name__ for i in group_runs(rows)] == ["Row", "Row"]
    # another setting (more steps) is another row, even with another seed
    _seed_run(tmp_path / "x", "pgd-s1", "pgd", 1, 44.0, 80.0, 0.9, 0.7, 0.68, steps=4)
    rows, _, _ = collect([seeded / "pgd", tmp_path / "x" / "pgd-s1"])
    assert [i.name for i in group_runs(rows)] == ["pgd", "pgd-s1"]


@pytest.mark.slow
def test_report_command_over_several_seeds(seeded, tmp_path, capsys):
    out = tmp_path / "cmp"
    dirs = [str(seeded / n) for n in ("pgd", "pgd-s1", "pgd-s2", "mdeat", "mdeat-s1")]
    assert main(["report", *dirs, "--out", str(out), "--reference", "pgd"]) == 0
    text = capsys.readouterr().out
    assert "Reference: pgd (pgd)" in text and "| n seeds |" in text and " ± " in text
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 5
    # run folders named by the user: the seed suffix is left out of the row's name; --reference by that name
    other = tmp_path / "mine"
    for run, by_seed in SEEDED.items():
        for seed, values in by_seed.items():
            _seed_run(other, f"{run}_seed{seed}", run, seed, *values)
    assert main(["report", str(other), "--out", str(tmp_path / "cmp2"), "--reference", "pgd"]) == 0
    md = (tmp_path / "cmp2" / "results.md").read_text()
    assert "Reference: pgd (pgd)" in md and "| mdeat " in md


@pytest.mark.slow
def test_frontier_draws_error_bars_for_several_seeds(seeded, tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    import fastrobust.reports as reports
    from fastrobust.bench import group_runs

    figures = {}
    save = reports._save

    def keep(fig, out):
        figures[Path(out).name] = list(fig.axes)
        return save(fig, out)

    monkeypatch.setattr(reports, "_save", keep)
    rows, _, _ = collect([seeded])
    items = group_runs(rows)
    _seed_run(tmp_path / "one", "free", "free", 0, 8.0, 16.0, 0.9, 0.5, 0.45)   # one seed: no error bar
    rows += collect([tmp_path / "one" / "free"])[0]
    written = write_report(rows, tmp_path / "rep", pick_reference(rows, None))
    assert written["frontier"].read_bytes()[:8] == PNG
    time_ax, passes_ax = figures["frontier.png"]
    for ax, attr in ((time_ax, "cpu_seconds"), (passes_ax, "passes")):
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2 and all(c.has_xerr and c.has_yerr for c in bars)   # pgd and mdeat, not free
        for bar, group in zip(bars, items):
            xline, yline = bar.lines[2]           # the horizontal and the vertical bar
            (x0, y), (x1, _) = xline.get_segments()[0]
            (_, y0), (_, y1) = yline.get_segments()[0]
            value = getattr(group, attr)
            assert (x1 - x0) / 2 == pytest.approx(value.std) and (x0 + x1) / 2 == pytest.approx(value)
            assert (y1 - y0) / 2 == pytest.approx(100 * group.robust.std) and y == pytest.approx(100 * group.robust)
    val_ax, = figures["val_robust.png"]
    assert len(val_ax.collections) == 2          # a band around each mean curve of several seeds
    assert "pgd (mean of 3 seeds)" in [t.get_text() for t in val_ax.get_legend().get_texts()]


@pytest.mark.slow
def test_a_bench_folder_keeps_its_order_with_the_seeds_of_each_run_together(seeded, tmp_path):
    from fastrobust.bench import group_runs

    (seeded / "bench.json").write_text(json.dumps({"suite": "x", "reference": "pgd", "runs": ["pgd", "mdeat"]}))
    rows, _, suggested = collect([seeded])
    assert [r.name for r in rows] == ["pgd", "pgd-s1", "pgd-s2", "mdeat", "mdeat-s1"] and suggested == "pgd"
    assert [i.name for i in group_runs(rows)] == ["pgd", "mdeat"]
    rows, _, _ = collect([seeded], only=["pgd-s1", "pgd-s2", "mdeat-s1"])   # the suite's seed left out
    assert pick_reference(rows, None, "pgd").name == "pgd-s1"
    md = write_report(rows, tmp_path / "r", pick_reference(rows, None, "pgd"))["md"].read_text()
    assert "Reference: pgd (pgd)" in md and "| pgd  " in md and "| mdeat-s1 " in md


def _aa_eval(path, n, robust):
    (path / "eval-aa.json").write_text(json.dumps({
        "n": n, "eps": 0.3, "norm": "linf", "clean_accuracy": 0.95, "robust_accuracy": robust, "cascade": True,
        "attacks": {"clean": {"accuracy": 0.95, "worst_case_accuracy": 0.95},
                    "aa": {"accuracy": robust, "worst_case_accuracy": robust, "settings": {"attack": "AutoAttack"}}},
        "flags": [{"check": "square_beats_whitebox", "message": "Square fooled 2 examples"}] if robust < 0.5 else []}))


def test_autoattack_on_its_own_subset_is_a_column_with_its_spread(seeded, tmp_path):
    """eval-aa.json (a suite's aa_subset) adds `AutoAttack (N) %`: mean ± std over the seeds that have it,
    `(n=K)` where some seeds lack it so far, compared with the reference's mean; its flags are shown."""
    pgd_aa = {"pgd": 0.52, "pgd-s1": 0.48, "pgd-s2": 0.50}
    for folder, robust in pgd_aa.items():
        _aa_eval(seeded / folder, 500, robust)
    _aa_eval(seeded / "mdeat", 500, 0.40)                       # mdeat-s1 has none yet
    rows, _, _ = collect([seeded])
    items = group_runs_of(rows)
    assert [i.name for i in items] == ["mdeat", "pgd"]           # a missing eval-aa.json does not split the seeds
    md = write_report(rows, tmp_path / "rep", pick_reference(rows, None))["md"].read_text()
    header = next(l for l in md.splitlines() if l.startswith("| run"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    cell = lambda run: dict(zip(cols, [c.strip() for c in next(l for l in md.splitlines() if l.startswith(f"| {run} "))
                                       .strip("|").split("|")]))
    m, s = _mean_std(list(pgd_aa.values()))
    assert cell("pgd")["AutoAttack (500) %"] == f"{100 * m:.1f} ± {100 * s:.1f}"
    assert cell("mdeat")["AutoAttack (500) %"] == "40.0 (n=1)"
    assert cell("mdeat")["d AutoAttack (500) (pts)"] == f"{100 * (0.40 - m):+.1f}"
    assert "AutoAttack %" in cols                                 # the main evaluation's own column stays
    assert "its own evaluation (eval-aa.json) on the first 500" in md
    assert "WARNING (mdeat): square_beats_whitebox" in md


def group_runs_of(rows):
    from fastrobust.bench import group_runs

    return group_runs(rows)


def test_suite_aa_subset_is_checked():
    base = ("name: s\nreference: pgd\nruns:\n  pgd:\n")
    assert parse_suite(base + "evaluation: {attacks: [clean, pgd20], aa_subset: 200}\n", "x").aa_subset == 200
    with pytest.raises(ConfigError, match="aa_subset must be an integer"):
        parse_suite(base + "evaluation: {aa_subset: 0}\n", "x")
    with pytest.raises(ConfigError, match="take 'aa' out of evaluation.attacks"):
        parse_suite(base + "evaluation: {attacks: [clean, aa], aa_subset: 100}\n", "x")


@pytest.mark.slow
def test_keep_runs_copies_the_records_without_checkpoints_and_they_report(runs, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("keep_runs", Path(__file__).parents[1] / "benchmarks" / "keep_runs.py")
    keep_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep_runs)
    (runs / "pgd" / "best.pt").write_bytes(b"x" * 100)
    dest = tmp_path / "records"
    assert keep_runs.main([str(runs), str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["free", "mdeat", "pgd"]      # 'broken' is unfinished
    assert not (dest / "pgd" / "best.pt").exists() and (dest / "pgd" / "eval.json").is_file()
    table = lambda folder: [l for l in write_report(collect([folder])[0], tmp_path / folder.name, None)["md"]
                            .read_text().splitlines() if l.startswith("|")]
    assert table(dest) == table(runs)
