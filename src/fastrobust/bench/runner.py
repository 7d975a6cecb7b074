"""``fastrobust bench``: train and evaluate every run of a suite, then write the comparison.

Each run lives in ``OUT/<run name>/`` (a normal run directory); with several
seeds (``--seeds`` or the suite's ``seeds:``), a seed other than the suite's
own trains in ``OUT/<run name>-s<seed>/``, all runs of one seed before the
next seed's. Rerunning the
same command continues where it stopped: a run with ``summary.json`` and an
``eval.json`` covering the suite's attacks is skipped; a run with
``summary.json`` only is evaluated; a run with ``last.pt`` is resumed exactly
(``train(cfg, resume=True)``); anything else is (re)started from scratch.
Settings are checked against each existing run's ``config.yaml`` first, so a
changed suite never mixes with old results silently. A folder with no
``bench.json`` is accepted when it holds only run folders named after the suite's
runs (say, trained earlier with ``fastrobust train``): they pass the same check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import load_yaml
from ..errors import ConfigError, FastrobustError
from ..runfolder import RunFolder
from .results import BENCH_FILE, collect, pick_reference, write_report
from .suite import RunSpec, Suite, check_attacks, check_folders, check_runs, config_differences

# files of a run that never got to its first checkpoint: removed before starting it again
_STALE = RunFolder.STALE


@dataclass
class Plan:
    run: RunSpec
    dir: Path
    action: str          # "done", "evaluate", "resume", "train"
    detail: str
    seed: int


AA_ATTACKS = ["clean", "aa"]     # the evaluation of a suite's aa_subset


def _eval_covers(path: Path, attacks: list[str], n: int | None) -> bool:
    """Whether an eval.json holds every attack asked for (on the asked number of images, when known)."""
    if not path.is_file():
        return False
    try:
        ev = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    done = set(ev.get("attacks") or {}) | {"clean"}
    return set(attacks) <= done and (n is None or ev.get("n") in (None, n))


def plan_runs(suite: Suite, runs: list[RunSpec], out: Path, attacks: list[str], overrides: dict,
              eval_n: int | None, seeds: list[int] | None = None, aa_n: int | None = None) -> list[Plan]:
    """What to do for each run and seed (all runs of a seed, then the next seed's). ``aa_n``: AutoAttack
    is also asked for, on its own first ``aa_n`` test images (eval-aa.json)."""
    seeds = seeds or [suite.base_seed]
    return [_plan(suite, run, seed, out, attacks, overrides, eval_n, aa_n) for seed in seeds for run in runs]


def _plan(suite: Suite, run: RunSpec, seed: int, out: Path, attacks: list[str], overrides: dict,
          eval_n: int | None, aa_n: int | None = None) -> Plan:
    d = out / suite.folder(run.name, seed)
    f = RunFolder(d)
    cfg = suite.train_config(run, d, seed=seed, **overrides)
    if f.config.is_file() and (f.last.is_file() or f.summary.is_file()):
        diffs = config_differences(cfg, load_yaml(f.config))
        if diffs:
            raise ConfigError(f"{d} was trained with other settings than suite {suite.name!r} now asks for ("
                              + "; ".join(diffs[:4]) + "). Use another --out, or delete that folder to train it again")
    if f.summary.is_file():
        if _eval_covers(f.eval, attacks, eval_n) and (aa_n is None or _eval_covers(f.eval_aa, AA_ATTACKS, aa_n)):
            return Plan(run, d, "done", "finished and evaluated: skipped", seed)
        return Plan(run, d, "evaluate", "trained; evaluating", seed)
    if f.last.is_file():
        epochs = sum(1 for line in f.metrics.read_text().splitlines() if line.strip()) \
            if f.metrics.is_file() else "?"
        return Plan(run, d, "resume", f"resuming the unfinished run (epoch {epochs} of {cfg.epochs} logged)", seed)
    return Plan(run, d, "train", "training", seed)


def describe(run: RunSpec) -> str:
    """``free-8 (free: replays 8)``: the run's name, method and the settings it gives."""
    settings = {**run.params, **run.config}
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items())
    method = run.method if run.method != run.name else ""
    inner = ": ".join(x for x in (method, text) if x)
    return run.name + (f" ({inner})" if inner else "")


def _prepare_out(out: Path, suite: Suite) -> None:
    marker = out / BENCH_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text()).get("suite")
        except json.JSONDecodeError:
            previous = None
        if previous not in (None, suite.name):
            raise FastrobustError(f"{out} holds results of suite {previous!r}, not {suite.name!r}; choose another --out")
    elif out.exists():
        # a folder of runs trained with `fastrobust train` under the suite's run names is adopted:
        # plan_runs has already checked each one's config.yaml against the suite
        foreign = sorted(p.name for p in out.iterdir()
                         if not (p.is_dir() and suite.owns_folder(p.name) and RunFolder(p).config.is_file()))
        if foreign:
            raise FastrobustError(
                f"{out} exists and is not a `fastrobust bench` output folder (no {BENCH_FILE}; it holds "
                f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}). Pass --out with a new or empty folder, "
                f"or one holding only run folders named after the suite's runs (RUN, or RUN-sSEED for another seed)")
    out.mkdir(parents=True, exist_ok=True)


def _check_autoattack(attacks: list[str]) -> None:
    if not any(a == "aa" or a.startswith(("apgd", "fab", "square")) for a in attacks):
        return
    try:
        from ..evaluation.autoattack import pyautoattack_version
    except ImportError:
        return
    if pyautoattack_version() is None:
        raise ConfigError("AutoAttack (--aa or an 'aa' attack in the suite) needs the pyautoattack package: "
                          "pip install pyautoattack")


def run_suite(suite: Suite, out: str | Path | None = None, *, methods: str | list[str] | None = None,
              device: str | None = None, data_dir: str | None = None, dataset: str | None = None,
              aa: bool = False, seeds: str | int | list[int] | None = None, progress: bool | None = None,
              dry_run: bool = False, echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Train, evaluate and compare the suite's runs (or those named in ``methods``, plus the reference).

    ``device``, ``data_dir`` and ``dataset`` override the suite's common settings; ``aa`` adds
    AutoAttack to its evaluation. ``seeds`` (``3``, ``"0,2"`` or a list; default the suite's
    ``seeds:``, else its one seed) trains every run once per seed, and the table gives the mean
    and standard deviation over them. Returns the paths written (results.md, results.csv, plots);
    with ``dry_run``, prints what would be done and returns an empty dict.
    """
    from ..engine import train
    from ..engine.lock import RunLock

    out = Path(out) if out else Path(f"bench-{suite.name}")
    overrides = {"device": device, "data_dir": data_dir, "dataset": dataset}
    runs, notes = suite.select(methods)
    seed_list = suite.resolve_seeds(seeds)
    check_folders(suite, seed_list)
    check_runs(suite, **overrides)
    aa_n = suite.aa_subset if aa else None      # AutoAttack on its own images, or with the suite's attacks
    attacks = check_attacks(suite.attacks + (["aa"] if aa and aa_n is None and "aa" not in suite.attacks else []))
    _check_autoattack(attacks + (AA_ATTACKS if aa_n else []))
    eval_n = suite.test_subset or suite.common.get("test_subset")
    plans = plan_runs(suite, runs, out, attacks, overrides, eval_n, seed_list, aa_n)
    several = len(seed_list) > 1
    shown = seed_list != [suite.base_seed]     # say which seed each run has, unless all have the suite's own
    for note in notes:
        echo(f"note: {note}")
    echo(f"suite {suite.source}: {len(plans)} runs"
         + (f" ({len(runs)} runs x {len(seed_list)} seeds: {', '.join(map(str, seed_list))})" if several else "")
         + f" -> {out}; evaluation: {', '.join(attacks)}"
         + (f" on {eval_n} test images" if eval_n else " on the test set")
         + (f"; AutoAttack on the first {aa_n}" if aa_n else ""))
    what = lambda p: describe(p.run) + (f", seed {p.seed} ({p.dir.name})" if shown else "")
    for i, p in enumerate(plans, 1):
        echo(f"  [{i}/{len(plans)}] {what(p)}: {p.detail}")
    if dry_run:
        return {}

    _prepare_out(out, suite)
    from ..engine.checkpoint import atomic_write_text

    atomic_write_text(out / "suite.yaml", suite.text)
    atomic_write_text(out / BENCH_FILE, json.dumps({
        "suite": suite.name, "source": suite.source, "reference": suite.reference,
        "runs": [r.name for r in suite.runs], "seeds": seed_list, "attacks": attacks,
        "overrides": {k: v for k, v in overrides.items() if v is not None}}, indent=2) + "\n")
    for i, p in enumerate(plans, 1):
        echo(f"\n[{i}/{len(plans)}] {what(p)}: {p.detail}")
        if p.action == "done":
            continue
        with RunLock(p.dir, "fastrobust bench"):   # one writer per run folder (train takes it again inside)
            if p.action in ("train", "resume"):
                if p.action == "train":
                    for name in _STALE:
                        (p.dir / name).unlink(missing_ok=True)
                train(suite.train_config(p.run, p.dir, seed=p.seed, **overrides), resume=p.action == "resume",
                      progress=progress, echo=echo)
            f = RunFolder(p.dir)
            asked = [(attacks, eval_n, f.eval)] + ([(AA_ATTACKS, aa_n, f.eval_aa)] if aa_n else [])
            for names, n, path in asked:
                if p.action == "evaluate" and _eval_covers(path, names, n):
                    continue            # the other evaluation was missing
                evaluate_run(p.dir, names, test_subset=n, batch_size=suite.eval_batch_size,
                             device=device or suite.common.get("device"),
                             data_dir=data_dir, progress=progress, echo=echo, out=path)

    # the table: every finished run of the suite in this folder (also those of earlier --methods or --seeds);
    # the seeds of a run are grouped by write_report
    rows, unfinished, _ = collect([out], only=sorted(p.name for p in out.iterdir() if suite.owns_folder(p.name)))
    ref = pick_reference(rows, None, suite.reference)
    intro = (f"Suite `{suite.name}` ({suite.source}): {suite.description}".rstrip(": ") + "\n\n"
             f"Command: `fastrobust bench {suite.name if suite.source.endswith('(shipped)') else suite.source}"
             f" --out {out}" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in overrides.items() if v is not None)
             + (f" --methods {methods if isinstance(methods, str) else ','.join(methods)}" if methods else "")
             + (" --aa" if aa else "")
             + (f" --seeds {seeds if isinstance(seeds, (str, int)) else ','.join(map(str, seeds))}"
                if seeds is not None else "") + "`")
    written = write_report(rows, out, ref, unfinished, title=f"fastrobust bench: {suite.name}", intro=intro)
    echo("\n" + (out / "results.md").read_text())
    echo("wrote " + ", ".join(str(p) for p in written.values()))
    return written


def evaluate_run(run_dir: Path, attacks: list[str], *, test_subset: int | None, batch_size: int,
                 device: str | None, data_dir: str | None, progress: bool | None,
                 echo: Callable[[str], None] = print, out: Path | None = None) -> dict:
    """Evaluate a trained run's best checkpoint with ``attacks``; writes ``out`` (default RUN_DIR/eval.json)."""
    from ..evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(run_dir, attacks=tuple(attacks), test_subset=test_subset, batch_size=batch_size,
                                 device=None if device in (None, "auto") else device, data_dir=data_dir,
                                 progress=progress, out=out)
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    accs = ", ".join(f"{name} {pct(r['accuracy'])}" for name, r in result["attacks"].items())
    echo(f"evaluated {run_dir.name} on {result['n']} test images: {accs or 'no accuracy (broken model)'}; "
         f"worst case {pct(result['robust_accuracy'])}")
    for flag in result.get("flags") or []:
        echo(f"WARNING: {flag.get('check')}: {flag.get('message')}")
    return result
