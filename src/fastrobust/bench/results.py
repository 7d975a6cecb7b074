"""Reading finished runs and writing the comparison: ``results.md``, ``results.csv`` and the plots.

A row is one run directory. Its accuracies come from ``eval.json`` (written
by the evaluation: ``fastrobust eval`` or ``fastrobust bench``) when there is
one, else from the end-of-training test numbers in ``summary.json``, and the
table says which. Costs (passes per example, training-loop seconds) always
come from ``summary.json``. Every cost and accuracy is also given relative to
a reference run (PGD-AT in the shipped suites).

Runs that differ only in their seed (their ``config.yaml`` without ``seed``,
the device and the evaluation's settings being the same) form a
:class:`SeedGroup`: one line of the table, each accuracy and cost the mean
(a :class:`Stat`, printed as ``mean ± std``) over the seeds; ``results.csv``
keeps one row per seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import FastrobustError
from ..evaluation.specs import attack_label
from ..runfolder import EVAL, SUMMARY, RunFolder

BENCH_FILE = "bench.json"
SUMMARY_MARK = "†"
# the settings of each attack named under the table (eval.json holds them all)
SETTINGS_SHOWN = ("attack", "alpha", "random_start", "components", "queries", "version")
# configuration keys that do not make two runs different experiments (besides the seed)
NOT_SETTINGS = ("seed", "out", "device", "data_dir", "dist_timeout")
# a seed in a folder's name: pgd-s1 (bench), pgd_seed1, pgd.s1 ...
_SEED_SUFFIX = re.compile(r"[-_.](?:s|seed)\d+$")


@dataclass
class Row:
    name: str
    run_dir: Path
    summary: dict
    evaluation: dict | None
    metrics: list[dict] = field(default_factory=list)
    config: dict | None = None           # config.yaml, when the run has one
    aa_evaluation: dict | None = None    # eval-aa.json: AutoAttack on its own subset (a suite's aa_subset)
    n_seeds = 1

    @property
    def summaries(self) -> list[dict]:
        return [self.summary]

    @property
    def seed(self) -> int | None:
        seed = (self.config or {}).get("seed", self.summary.get("seed"))
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def method(self) -> str:
        return str(self.summary.get("method", "?"))

    @property
    def passes(self) -> float | None:
        return self.summary.get("passes_per_example")

    @property
    def seconds(self) -> float | None:
        return self.summary.get("train_seconds")

    @property
    def cpu_seconds(self) -> float | None:
        return self.summary.get("train_cpu_seconds")

    @property
    def on_cpu(self) -> bool:
        return str(self.summary.get("device", "cpu")).startswith("cpu")

    @property
    def peak_mb(self) -> float | None:
        """summary.json's peak_memory_mb (CUDA max_memory_allocated, or the CPU process's peak RSS)."""
        return self.summary.get("peak_memory_mb")

    def accuracies(self) -> dict[str, float]:
        """Column label -> accuracy (fraction): clean first, then each attack in the order it ran.

        With the evaluation's cascade (each attack runs on the examples still robust), an attack's
        column is the accuracy under it and every attack before it: the per-example worst case so
        far; the last column is the overall robust accuracy.
        """
        ev = self.evaluation
        if ev is None:
            return {"clean": self.summary.get("test_clean_acc"),
                    summary_attack_label(self.summary): self.summary.get("test_robust_acc")}
        out = {"clean": ev.get("clean_accuracy")}
        key = "worst_case_accuracy" if ev.get("cascade", True) else "accuracy"
        for name, result in (ev.get("attacks") or {}).items():
            if name != "clean":
                out[attack_label(name)] = result.get(key, result.get("accuracy"))
        aa = self.aa_evaluation
        if aa is not None:
            out[aa_label(aa)] = aa.get("robust_accuracy")
        return out

    def prefix(self, label: str) -> tuple[str, ...]:
        """The columns up to ``label``: with the cascade, what an attack's column depends on
        (the AutoAttack of eval-aa.json depends on nothing else: its label names its images)."""
        if self.aa_evaluation is not None and label == aa_label(self.aa_evaluation):
            return (label,)
        labels = list(self.accuracies())
        return tuple(labels[:labels.index(label) + 1]) if label in labels else ()

    @property
    def robust(self) -> float | None:
        """The headline robust accuracy: per-example worst case over the evaluation's attacks."""
        if self.evaluation is None:
            return self.summary.get("test_robust_acc")
        return self.evaluation.get("robust_accuracy")

    @property
    def n_test(self) -> int | None:
        return (self.evaluation or {}).get("n", self.summary.get("test_examples"))


def aa_label(aa_eval: dict) -> str:
    """The column of an eval-aa.json: AutoAttack on its number of test images."""
    return f"{attack_label('aa')} ({aa_eval.get('n', '?')})"


def summary_attack_label(summary: dict) -> str:
    attack = str(summary.get("test_attack", "PGD")).split(",")[0]
    return f"{attack} (summary.json)"


# ---------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FastrobustError(f"{path} is not valid JSON ({exc}); delete it to redo that step") from None


def read_row(run_dir: Path, name: str | None = None) -> Row | None:
    """The row of a finished run (None when it has no summary.json yet)."""
    folder = RunFolder(run_dir)
    summary = _read_json(folder.summary)
    if summary is None:
        return None
    metrics_path = folder.metrics
    metrics = []
    if metrics_path.is_file():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    config = None
    if folder.config.is_file():
        try:
            config = yaml.safe_load(folder.config.read_text())
        except yaml.YAMLError:
            config = None
    return Row(name or run_dir.name, run_dir, summary, _read_json(folder.eval), metrics,
               config if isinstance(config, dict) else None, _read_json(folder.eval_aa))


def is_run_dir(path: Path) -> bool:
    return RunFolder(path).is_run()


def collect(dirs: list[str | Path], only: list[str] | None = None) -> tuple[list[Row], list[str], str | None]:
    """Rows from bench output folders and/or run directories.

    Returns the rows, the names of unfinished runs, and the reference named by a bench folder (if any).
    """
    rows, unfinished, reference = [], [], None
    for d in map(Path, dirs):
        if not d.is_dir():
            raise FastrobustError(f"{d} is not a folder: pass bench output folders or run directories")
        bench = _read_json(d / BENCH_FILE)
        if is_run_dir(d):
            run_dirs = [d]
        else:
            # the bench's order (another seed's folder next to its run's), then the others by name
            rank = {n: i for i, n in enumerate(bench.get("runs", []) if bench else [])}
            run_dirs = sorted((p for p in d.iterdir() if p.is_dir() and is_run_dir(p)),
                              key=lambda p: (rank.get(p.name, rank.get(base_name(p.name), len(rank))), p.name))
            if not run_dirs:
                raise FastrobustError(f"{d} holds no runs (no summary.json in it or its subfolders): pass a "
                                      f"`fastrobust bench` output folder or run directories of `fastrobust train`")
            if bench and reference is None:
                reference = bench.get("reference")
        for rd in run_dirs:
            if only is not None and rd.name not in only:
                continue
            row = read_row(rd)
            if row is None:
                unfinished.append(str(rd))
            else:
                rows.append(row)
    names = [r.name for r in rows]
    for r in rows:   # the same folder name from two places: qualify it with its parent
        if names.count(r.name) > 1:
            r.name = f"{r.run_dir.parent.name}/{r.run_dir.name}"
    return rows, unfinished, reference


def pick_reference(rows: list[Row], wanted: str | None, suggested: str | None = None) -> Row | None:
    """The reference row: ``wanted`` (a run or method name; an error if absent), else the suggested one, else a pgd run."""
    if wanted:
        hit = next((r for r in rows if r.name == wanted), None) or \
            next((r for r in rows if base_name(r.name) == wanted), None) or \
            next((r for r in rows if r.method == wanted), None)
        if hit is None:
            raise FastrobustError(f"--reference {wanted!r} is none of the runs ({', '.join(r.name for r in rows)})")
        return hit
    if suggested:
        hit = next((r for r in rows if r.name == suggested), None) or \
            next((r for r in rows if base_name(r.name) == suggested), None)
        if hit is not None:
            return hit
    return next((r for r in rows if r.method == "pgd"), None)


# --------------------------------------------------------------------------- several seeds of one run
class Stat(float):
    """A value's mean over seeds (it is that float), with the sample standard deviation ``std``, its
    count ``n`` and ``of``, the number of seeds of its row where some may lack this value (None: all have it)."""

    std: float
    n: int
    of: int | None

    def __new__(cls, values, of: int | None = None):
        vals = [float(v) for v in values]
        self = super().__new__(cls, math.fsum(vals) / len(vals))
        self.std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        self.n = len(vals)
        self.of = of
        return self


def stat(values, of: int | None = None) -> Stat | None:
    """The :class:`Stat` of the values that are not None (None when none is); ``of``: see :class:`Stat`."""
    vals = [v for v in values if v is not None]
    return Stat(vals, of) if vals else None


class SeedGroup:
    """Runs that differ only in their seed, as one row of the table: every accuracy and cost is a
    :class:`Stat` (the mean, with its spread); ``metrics`` are the per-epoch means (``metrics_std``
    their standard deviations)."""

    def __init__(self, rows: list[Row], name: str):
        self.rows = sorted(rows, key=lambda r: r.seed)
        self.name = name
        first = self.rows[0]
        self.run_dir, self.summary, self.evaluation = first.run_dir, first.summary, first.evaluation
        self.aa_evaluation = first.aa_evaluation
        self.config = first.config
        self.metrics, self.metrics_std = _mean_metrics(self.rows)

    n_seeds = property(lambda self: len(self.rows))
    summaries = property(lambda self: [r.summary for r in self.rows])
    seeds = property(lambda self: [r.seed for r in self.rows])
    method = property(lambda self: self.rows[0].method)
    on_cpu = property(lambda self: self.rows[0].on_cpu)
    n_test = property(lambda self: self.rows[0].n_test)
    passes = property(lambda self: stat(r.passes for r in self.rows))
    seconds = property(lambda self: stat(r.seconds for r in self.rows))
    cpu_seconds = property(lambda self: stat(r.cpu_seconds for r in self.rows))
    peak_mb = property(lambda self: stat(r.peak_mb for r in self.rows))
    robust = property(lambda self: stat(r.robust for r in self.rows))

    def accuracies(self) -> dict[str, Stat | None]:
        """Each column's Stat over the seeds that have it (``of``: the group's seeds; an AutoAttack of
        eval-aa.json may be done for some seeds only)."""
        each = [r.accuracies() for r in self.rows]
        labels = list(dict.fromkeys(label for acc in each for label in acc))
        return {label: stat((acc.get(label) for acc in each), of=len(self.rows)) for label in labels}

    def prefix(self, label: str) -> tuple[str, ...]:
        return self.rows[0].prefix(label)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_metrics(rows: list[Row]) -> tuple[list[dict], list[dict]]:
    """Per epoch, the mean and the standard deviation over the rows of every number logged in metrics.jsonl."""
    epochs = sorted({m["epoch"] for r in rows for m in r.metrics if _number(m.get("epoch"))})
    means, stds = [], []
    for e in epochs:
        records = [m for r in rows for m in r.metrics if m.get("epoch") == e]
        keys = sorted({k for m in records for k, v in m.items() if k != "epoch" and _number(v)})
        values = {k: stat(m[k] for m in records if _number(m.get(k))) for k in keys}
        means.append({"epoch": e, **{k: float(v) for k, v in values.items()}})
        stds.append({"epoch": e, **{k: v.std for k, v in values.items()}})
    return means, stds


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def settings_key(row: Row) -> str | None:
    """What makes two runs the same experiment: config.yaml without the seed (and where it ran from), the
    device type and the evaluation's attacks, images and eps. None for a run without config.yaml or seed."""
    if row.config is None or row.seed is None:
        return None
    config = {k: v for k, v in row.config.items() if k not in NOT_SETTINGS}
    ev = row.evaluation     # (an eval-aa.json, done for some seeds only so far, does not split the seeds)
    evaluation = None if ev is None else [ev.get("n"), list(ev.get("attacks") or {}), ev.get("eps"), ev.get("norm"),
                                          ev.get("cascade", True)]
    device = str(row.summary.get("device", "?")).split(":")[0]
    return json.dumps(_rounded([config, evaluation, device]), sort_keys=True, default=str)


def base_name(name: str) -> str:
    """A run's name without the seed its folder name ends with: ``pgd-s1`` -> ``pgd``."""
    return _SEED_SUFFIX.sub("", name) or name


def group_runs(rows: list[Row]) -> list[Row | SeedGroup]:
    """The rows, with the runs that differ only in their seed merged into one :class:`SeedGroup` each
    (at the place of the first). A run without config.yaml, one seed alone, or two runs of the same
    setting and the same seed stay rows of their own."""
    buckets: dict[str, list[Row]] = {}
    order: list[list[Row]] = []
    for r in rows:
        key = settings_key(r)
        if key is None:
            order.append([r])
        elif key in buckets:
            buckets[key].append(r)
        else:
            buckets[key] = [r]
            order.append(buckets[key])
    parts: list[list[Row]] = []
    for members in order:
        seeds = [m.seed for m in members]
        parts += [members] if len(set(seeds)) == len(seeds) else [[m] for m in members]
    taken = {p[0].name for p in parts if len(p) == 1}
    items: list[Row | SeedGroup] = []
    for members in parts:
        if len(members) == 1:
            items.append(members[0])
            continue
        members = sorted(members, key=lambda r: r.seed)
        bases = {base_name(m.run_dir.name) for m in members}
        name = bases.pop() if len(bases) == 1 else base_name(members[0].name)
        name = members[0].name if name in taken else name
        taken.add(name)
        items.append(SeedGroup(members, name))
    return items


# ---------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _delta(a, b) -> float | None:
    return None if a is None or b is None else 100 * (a - b)


def _fmt(v, spec: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    return format(v, ("+" if signed else "") + spec)


def table_data(rows: list[Row | SeedGroup], ref: Row | SeedGroup | None) -> tuple[list[str], list[list]]:
    """The table's header and rows of raw values (None = not available), shared by Markdown and CSV.

    A :class:`SeedGroup`'s accuracies and costs are :class:`Stat` (means, with their spread), and the
    column ``n seeds`` appears; ratios and differences from the reference compare means.
    """
    labels: list[str] = []
    for r in rows:
        labels += [k for k in r.accuracies() if k not in labels]
    any_cpu = any(r.on_cpu for r in rows)
    ref_acc = ref.accuracies() if ref else {}
    sizes = {r.n_test for r in rows}
    seeds = any(r.n_seeds > 1 for r in rows)
    head = ["run", "method", "epochs", *(["n seeds"] if seeds else []), *(["test n"] if len(sizes) > 1 else []),
            *(f"{l} %" for l in labels),
            "passes/ex", "train s"]
    head += ["CPU s"] if any_cpu else []
    any_peak = any(r.peak_mb is not None for r in rows)   # runs of before peak memory was recorded: none
    head += ["peak MiB"] if any_peak else []
    head += ["passes / ref", "time / ref"] + (["CPU time / ref"] if any_cpu else [])
    delta_labels = [l for l in labels if l in ref_acc]
    head += [f"d {l} (pts)" for l in delta_labels]
    data = []
    for r in rows:
        acc = r.accuracies()
        name = r.name + ("" if r.evaluation is not None else f" {SUMMARY_MARK}") + seeds_collapse_mark(r.summaries)
        vals = [name, r.method, r.summary.get("epochs"), *([r.n_seeds] if seeds else []),
                *([r.n_test] if len(sizes) > 1 else []),
                *(acc.get(l) for l in labels), r.passes, r.seconds]
        vals += [r.cpu_seconds if r.on_cpu else None] if any_cpu else []
        vals += [r.peak_mb] if any_peak else []
        vals += [_ratio(r.passes, ref and ref.passes), _ratio(r.seconds, ref and ref.seconds)]
        vals += [_ratio(r.cpu_seconds, ref and ref.cpu_seconds) if r.on_cpu and ref and ref.on_cpu else None] if any_cpu else []
        # compared only on the same test images and after the same attacks (with the cascade a column
        # is the worst case over the attacks left of it)
        same = ref is not None and r.n_test == ref.n_test
        vals += [_delta(acc.get(l), ref_acc.get(l)) if same and r.prefix(l) == ref.prefix(l) else None
                 for l in delta_labels]
        data.append(vals)
    return head, data


def collapse_mark(summary: dict) -> str:
    """A run whose validation robust accuracy collapsed (engine/guard.py) says so in every table."""
    events = summary.get("guard_events") or []
    if events:
        return f" (collapsed, guard x{len(events)})"
    return f" (collapsed in epoch {summary['collapsed_epoch']})" if summary.get("collapsed") else ""


def seeds_collapse_mark(summaries: list[dict]) -> str:
    """:func:`collapse_mark` of one run; of several seeds of a run, how many collapsed (and in which
    epochs) or were recovered by the guard, so that a row's mean never hides a collapsed seed."""
    if len(summaries) == 1:
        return collapse_mark(summaries[0])
    n = len(summaries)
    guarded = [s for s in summaries if s.get("guard_events")]
    fell = [s for s in summaries if s.get("collapsed") and not s.get("guard_events")]
    parts = [f"collapsed in {len(fell)} of {n} seeds: epoch{'s' if len(fell) > 1 else ''} "
             + ", ".join(str(s.get("collapsed_epoch")) for s in fell)] if fell else []
    parts += [f"guard in {len(guarded)} of {n} seeds"] if guarded else []
    return f" ({'; '.join(parts)})" if parts else ""


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    short = f" (n={value.n})" if isinstance(value, Stat) and value.of and value.n < value.of else ""
    if isinstance(value, Stat) and value.n > 1:
        return f"{_number_cell(column, float(value), value)} ± {_number_cell(column, value.std, value)}{short}"
    return _number_cell(column, value, value) + short


def _number_cell(column: str, value, size) -> str:
    """``value`` as the column shows it, with the precision of a number of ``size``."""
    if column.endswith(" %"):
        return _pct(value)
    if column.startswith("d "):
        return _fmt(value, ".1f", signed=True)
    if "/ ref" in column:
        return _fmt(value, ".2f")
    if column in ("train s", "CPU s"):
        return _fmt(value, ".0f" if size >= 100 else ".1f")
    if column == "passes/ex":
        return _fmt(value, ".1f")
    if column == "peak MiB":
        return _fmt(value, ".0f")
    return str(value)


def markdown_table(head: list[str], data: list[list]) -> str:
    cells = [[_cell(h, v) for h, v in zip(head, row)] for row in data]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = lambda cs: "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def notes(rows: list[Row], ref: Row | SeedGroup | None, unfinished: list[str],
          items: list[Row | SeedGroup] | None = None) -> list[str]:
    """The lines under the table: what the numbers are, where they come from, warnings.

    ``rows`` are the runs (one per seed), ``items`` the table's lines (their seeds grouped).
    """
    out = []
    if ref is not None:
        out.append(f"Reference: {ref.name} ({ref.method}). `/ ref` = this run's cost divided by the reference's; "
                   f"`d X (pts)` = accuracy minus the reference's, in percentage points.")
    else:
        out.append("No reference run among these (pass --reference NAME): no ratios or differences.")
    groups = [g for g in items or [] if isinstance(g, SeedGroup)]
    if groups:
        seed_sets = {tuple(g.seeds) for g in groups}
        which = ("seeds " + ", ".join(map(str, seed_sets.pop()))) if len(seed_sets) == 1 else "; ".join(
            f"{g.name}: seeds {', '.join(map(str, g.seeds))}" for g in groups)
        out.append(f"Several seeds ({which}): a row with `n seeds` above 1 stands for that many runs that differ "
                   f"only in their seed; each accuracy and cost is their mean ± sample standard deviation, and "
                   f"`/ ref` and `d` compare the means. A difference smaller than the spread of the two rows is no "
                   f"measurable difference. results.csv has one row per seed (column `seed`; its `/ ref` and `d` "
                   f"are against the reference's mean); the frontier plot's error bars are one standard deviation.")
    devices = sorted({str(r.summary.get("device", "?")) for r in rows})
    threads = sorted({str(r.summary.get("torch_threads")) for r in rows if r.summary.get("torch_threads")})
    cpu = " `CPU s` = CPU seconds of the training process (all threads), less moved by other load on the machine." \
        if any(r.on_cpu for r in rows) else ""
    peak = " `peak MiB` = the run's peak memory (summary.json: peak_memory_mb): on CUDA the most GPU memory held " \
        "by tensors, on the CPU the process's peak resident memory (all of it, the data included)." \
        if any(r.peak_mb is not None for r in rows) else ""
    out.append(f"Cost: passes/ex = forward+backward passes per training example over the whole run; train s = "
               f"wall seconds of the training loop only (evaluation excluded).{cpu}{peak} Device: {', '.join(devices)}"
               + (f"; torch threads: {', '.join(threads)}." if threads else "."))
    evaluated = [r for r in rows if r.evaluation is not None]
    if evaluated:
        ev = evaluated[0].evaluation
        ns = sorted({r.n_test for r in evaluated if r.n_test is not None})
        if len({r.n_test for r in rows}) > 1:
            out.append("The runs were evaluated on different numbers of test images (column `test n`): "
                       "differences from the reference are left out where the images differ.")
        cascade = all(r.evaluation.get("cascade", True) for r in evaluated)
        out.append(f"Accuracy on {' / '.join(map(str, ns))} test images, eps {_fmt(ev.get('eps'), '.4g')} "
                   f"({ev.get('norm', 'linf')}). " + (
                       "Attacks run cheapest first, each on the examples still robust, so an attack's column is "
                       "the accuracy under it and every attack left of it (per-example worst case); the last "
                       "attack column is the robust accuracy." if cascade else
                       "Every attack ran on every example: each column is that attack's own accuracy."))
        seen = {}
        for r in evaluated:
            for name, result in (r.evaluation.get("attacks") or {}).items():
                if name != "clean" and name not in seen and result.get("settings"):
                    seen[name] = result["settings"]
        for name, settings in seen.items():
            shown = {k: settings[k] for k in SETTINGS_SHOWN if k in settings}
            if isinstance(shown.get("components"), (dict, list, tuple)):
                shown["components"] = ", ".join(shown["components"])
            out.append(f"- {attack_label(name)}: " + "; ".join(
                f"{k.replace('_', ' ')} {_fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in shown.items()))
    with_aa = [r for r in rows if r.aa_evaluation is not None]
    if with_aa:
        ns = sorted({r.aa_evaluation.get("n") for r in with_aa if r.aa_evaluation.get("n")})
        out.append(f"{attack_label('aa')} (N): its own evaluation (eval-aa.json) on the first "
                   f"{' / '.join(map(str, ns))} of the test images: the standard version (apgd-ce, apgd-t, fab-t, "
                   f"square), the per-example worst case over its attacks.")
    plain = [r for r in rows if r.evaluation is None]
    if plain:
        out.append(f"{SUMMARY_MARK} no eval.json: accuracies are the end-of-training test numbers in summary.json "
                   f"({plain[0].summary.get('test_attack', '?')}, {plain[0].summary.get('test_examples', '?')} images), "
                   f"not the evaluation's attacks (run `fastrobust eval RUN_DIR` for those): "
                   + ", ".join(r.name for r in plain) + ".")
    for r in rows:
        for ev in (r.evaluation, r.aa_evaluation):
            for flag in (ev or {}).get("flags") or []:
                out.append(f"WARNING ({r.name}): {flag.get('check', 'check')}: {flag.get('message', '')}")
    if unfinished:
        out.append("Not finished (no summary.json), left out: " + ", ".join(unfinished) + ".")
    return out


def csv_text(head: list[str], data: list[list], rows: list[Row], names: list[str] | None = None) -> str:
    """The table as CSV, with full-precision numbers (accuracies in percent) and where each row came from.

    ``names`` replace the rows' own in the ``run`` column (the name of the group a seed's row belongs to).
    """
    fixed = {"passes/ex": "passes_per_example", "train s": "train_seconds", "CPU s": "train_cpu_seconds",
             "peak MiB": "peak_memory_mb"}

    def key(h: str) -> str:
        h = fixed.get(h, h).replace(" %", " pct").replace(" / ref", " vs ref").replace("(pts)", "pts")
        return re.sub(r"[^a-z0-9]+", "_", h.lower()).strip("_")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([key(h) for h in head] + ["accuracy_source", "test_images", "device", "torch_threads", "seed",
                                         "run_dir"])
    for i, (row, r) in enumerate(zip(data, rows)):
        vals = [(names[i] if names else r.name) if j == 0 else (100 * v if h.endswith(" %") and v is not None else v)
                for j, (h, v) in enumerate(zip(head, row))]
        w.writerow(["" if v is None else float(v) if isinstance(v, Stat) else v for v in vals] + [
            EVAL if r.evaluation is not None else SUMMARY, r.n_test,
            r.summary.get("device"), r.summary.get("torch_threads"), r.seed, str(r.run_dir)])
    return buf.getvalue()


def write_report(rows: list[Row], out: str | Path, ref: Row | None, unfinished: list[str] = (), *,
                 title: str = "fastrobust benchmark", intro: str = "") -> dict[str, Path]:
    """Write results.md, results.csv and the plots into ``out``; returns the paths written.

    ``rows`` are single runs; those that differ only in their seed become one line of the table and
    the plots (mean ± standard deviation), and keep one row each in results.csv. ``ref`` may be a
    row of such a group: the group is the reference.
    """
    from ..engine.checkpoint import atomic_write_text
    from ..reports import plot_frontier, plot_schedules, plot_val_curves

    if not rows:
        raise FastrobustError("no finished runs to report (none has a summary.json yet)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = group_runs(rows)
    if ref is not None:
        ref = next((it for it in items if it is ref or any(m is ref for m in getattr(it, "rows", ()))), ref)
    head, data = table_data(items, ref)
    flat = [m for it in items for m in (it.rows if isinstance(it, SeedGroup) else [it])]
    names = [it.name for it in items for _ in (it.rows if isinstance(it, SeedGroup) else [it])]
    csv_head, csv_data = table_data(flat, ref)
    written = {"csv": out / "results.csv", "md": out / "results.md"}
    plots = {"frontier": plot_frontier(items, out / "frontier.png", ref),
             "val_robust": plot_val_curves(items, out / "val_robust.png"),
             "schedules": plot_schedules(items, out / "schedules.png")}
    written.update({k: v for k, v in plots.items() if v is not None})
    md = [f"# {title}", ""] + ([intro, ""] if intro else [])
    md += [markdown_table(head, data), ""]
    for line in notes(flat, ref, list(unfinished), items):   # paragraphs; consecutive "- " lines stay one list
        md += [line] if line.startswith("- ") and md[-1].startswith("- ") else ["", line] if md[-1] else [line]
    md.append("")
    md += [f"![{k}]({p.name})" for k, p in plots.items() if p is not None]
    atomic_write_text(written["csv"], csv_text(csv_head, csv_data, flat, names))
    atomic_write_text(written["md"], "\n".join(md) + "\n")
    return written
