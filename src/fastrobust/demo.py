"""``fastrobust demo``: the main job on the MNIST subset that ships with the package, in under 2 minutes.

Trains PGD-AT and the cheaper methods this project is about (by default GAAT and DEAT-p; ``--methods``
adds others, such as M+DEAT or natural training) with one shared recipe (same model, data, seed, epochs, eps), evaluates each model on the
test images (clean, PGD-20) and with AutoAttack on a small test subset, and prints a table of cost and
robustness, side by side.

The setting (L-inf eps 0.1 on MNIST, 3 epochs, eps ramped up over the first) is one where the cheap
methods do what their papers claim: at eps 0.3, MNIST's usual radius, the DEAT methods' replays step by
1.25 eps = 0.375, the step at which single-step training overfits catastrophically on MNIST (the `mnist`
suite's M+DEAT and DEAT-p runs, docs/results.md), and GAAT needs more epochs than a 2-minute demo has
to catch up with PGD-AT. The demo runs torch on one thread (restored after), so that its accuracies are
the same on every run on a machine (README's table: tests/test_demo_readme.py).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path

from .bench.results import collapse_mark
from .config import TrainConfig
from .errors import FastrobustError

DEFAULT_METHODS = ("pgd", "gaat", "deat-p")
MARKER = ".fastrobust-demo"

# The shared recipe (mnist-cnn on 5,500 training images of the shipped subset; 500 held out
# for checkpoint selection and the collapse check, with PGD-5): Adam at a constant 1e-3 (in 3 epochs a step
# decay only slows it down), eps 0.1 ramped up over the first epoch.
RECIPE = TrainConfig(
    dataset="mnist-subset", model="mnist-cnn", epochs=3, batch_size=100, optimizer="adam", lr=1e-3,
    lr_schedule="constant", eps=0.1, eps_warmup=1, val_size=500, val_steps=5, seed=0,
)
METHOD_PARAMS = {"pgd": {"steps": 10}, "free": {"replays": 4}}
#: Test images (the trainer's seeded ``--test-subset`` choice) that AutoAttack attacks: it is slow on a CPU.
AA_EXAMPLES = 30
#: torch threads while the demo runs: one, so that the accuracies do not depend on the machine's core count.
THREADS = 1


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FastrobustError(f"{out} exists and is not a fastrobust demo folder; pass --out with a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def run_demo(out: str = "fastrobust-demo", epochs: int | None = None, methods: str | None = None,
             progress: bool | None = None, echo=print, aa_examples: int = AA_EXAMPLES) -> list[dict]:
    """Train and evaluate each method; print and return the summaries.

    Each model is also attacked with PGD-20 and then AutoAttack (standard version) on ``aa_examples`` test
    images (0: not); the worst case per image goes into the summary as ``aa_acc`` (PGD-20's alone as
    ``aa_pgd_acc``) and into the run's ``eval.json``. Progress: a line per epoch and per step (with the seconds
    since the start), and progress bars on a terminal.
    """
    import torch

    from .engine import train
    from .evaluation import GradientMaskingWarning, evaluate_checkpoint
    from .methods import get_method

    names = [m.strip() for m in methods.split(",")] if methods else list(DEFAULT_METHODS)
    for name in names:
        get_method(name)   # refuse unknown names before any work
    if epochs is not None and epochs < 1:
        raise FastrobustError(f"--epochs must be >= 1, got {epochs}")
    root = Path(out)
    _prepare_out(root)
    summaries = []
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    clock = lambda: f"[{time.perf_counter() - start:.0f} s]"
    try:
        for i, name in enumerate(names, 1):
            run_dir = root / name
            shutil.rmtree(run_dir, ignore_errors=True)   # a previous demo's run of this method
            cfg = dataclasses.replace(
                RECIPE, method=name, out=str(run_dir), method_params=dict(METHOD_PARAMS.get(name, {})),
                epochs=epochs or RECIPE.epochs, eps_warmup=min(RECIPE.eps_warmup, epochs or RECIPE.epochs),
            )
            echo(f"\n=== {name} ({i} of {len(names)}) {clock()} ===")
            summary = train(cfg, progress=progress, echo=echo)
            if aa_examples:
                echo(f"PGD-20 and AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on {aa_examples} test images "
                     f"... {clock()}")
                with warnings.catch_warnings():     # the flags are echoed below
                    warnings.simplefilter("ignore", GradientMaskingWarning)
                    # PGD-20 first on the same images (AutoAttack then attacks what PGD-20 left), so that the AA column
                    # compares with something: a small subset's accuracy differs from the whole test set's
                    result = evaluate_checkpoint(run_dir, attacks="pgd20,aa", test_subset=aa_examples, progress=progress)
                summary = {**summary, "aa_acc": result["robust_accuracy"], "aa_examples": result["n"],
                           "aa_pgd_acc": result["attacks"]["pgd20"]["accuracy"],
                           "aa_seconds": result["attacks"]["aa"]["seconds"]}
                for flag in result["flags"]:
                    echo(f"WARNING ({flag['check']}): {flag['message']}")
                echo(f"AutoAttack on {result['n']} test images: {100 * summary['aa_acc']:.1f}% (PGD-20 on them: "
                     f"{100 * summary['aa_pgd_acc']:.1f}%; {summary['aa_seconds']:.1f} s) -> {run_dir / 'eval.json'}")
            summaries.append(summary)
    finally:
        torch.set_num_threads(threads)
    echo("\n" + format_table(summaries, reference="pgd"))
    echo(f"\nruns, metrics and checkpoints in {root.resolve()}/<method>/ (fastrobust.load_model(path) loads best.pt); "
         f"{clock()} in all")
    return summaries


def format_table(summaries: list[dict], reference: str = "pgd") -> str:
    """A Markdown table of cost and robustness, costs also as a fraction of the reference method.

    Time is the CPU time of the training loop (``train_cpu_seconds``; the wall-clock seconds where a summary has
    none): on a shared machine it varies far less with the load than the wall clock does."""
    ref = next((s for s in summaries if s["method"] == reference), None)
    with_aa = any(s.get("aa_acc") is not None for s in summaries)
    cpu = lambda s: s.get("train_cpu_seconds") or s["train_seconds"]
    head = ["method", "epochs", "clean %", "PGD-20 %", *(["AA %", "its PGD-20 %"] if with_aa else []), "passes/ex",
            "train CPU s", "passes / ref", "time / ref"]
    rows = []
    for s in summaries:
        ratio = lambda value, of: f"{value(s) / value(ref):.2f}" if ref and value(ref) else "-"
        pct = lambda key: f"{100 * s[key]:.1f}" if s.get(key) is not None else "-"
        aa = [pct("aa_acc"), pct("aa_pgd_acc")] if with_aa else []
        rows.append([
            s["method"] + collapse_mark(s), str(s["epochs"]), f"{100 * s['test_clean_acc']:.1f}", f"{100 * s['test_robust_acc']:.1f}",
            *aa, f"{s['passes_per_example']:.1f}", f"{cpu(s):.1f}",
            ratio(lambda x: x["passes_per_example"], "passes"), ratio(cpu, "time"),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    if summaries:
        s = summaries[0]
        out.append(f"\ntest set: {s['test_examples']} images; robust = {s['test_attack']}; "
                   f"reference for ratios: {reference}; time = CPU seconds of the training loop.")
        if with_aa:
            n_aa = next(x["aa_examples"] for x in summaries if x.get("aa_acc") is not None)
            out.append(f"AA = AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; pyautoattack), same eps, "
                       f"on {n_aa} of the test images, after PGD-20 (worst case per image); its PGD-20 = PGD-20 alone "
                       f"on those {n_aa} (`fastrobust eval RUN --attacks pgd20,aa --test-subset {n_aa}`).")
    return "\n".join(out)


#: The table's columns that the same code gives on every run (one thread, fixed seed): README's table is compared
#: on these (tests/test_demo_readme.py); the seconds vary with the machine and its load.
DETERMINISTIC_COLUMNS = ("method", "epochs", "clean %", "PGD-20 %", "AA %", "passes/ex", "passes / ref")


def table_rows(text: str) -> list[dict]:
    """The rows of the first Markdown table in ``text`` (as :func:`format_table` prints it), as dicts by column."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return []
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
    head = cells(lines[0])
    return [dict(zip(head, cells(line))) for line in lines[2:]]


def table_drift(expected: str, actual: str) -> list[str]:
    """How the deterministic columns of the table in ``actual`` differ from those in ``expected`` (empty: not)."""
    want, got = table_rows(expected), table_rows(actual)
    if not got:
        return ["no table in the demo's output"]
    if [r.get("method") for r in want] != [r.get("method") for r in got]:
        return [f"methods: {[r.get('method') for r in want]} != {[r.get('method') for r in got]}"]
    return [f"{g['method']}, {col}: {w.get(col)} != {g.get(col)}" for w, g in zip(want, got)
            for col in DETERMINISTIC_COLUMNS if w.get(col) != g.get(col)]
