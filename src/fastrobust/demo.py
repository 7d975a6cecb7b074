"""``fastrobust demo``: the main job on the MNIST subset that ships with the package.

Trains each method with one shared recipe (same model, data, seed, epochs,
eps), evaluates each model with AutoAttack on a small test subset, and prints
a table of cost and robustness, side by side.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

from .bench.results import collapse_mark
from .config import TrainConfig
from .errors import FastrobustError

DEFAULT_METHODS = ("natural", "pgd", "gaat", "mdeat", "deat-p")
MARKER = ".fastrobust-demo"

# The shared recipe (mnist-cnn on 5,500 training images of the shipped subset; 500 held out
# for checkpoint selection): Adam, eps 0.3 ramped up over the first epochs, which keeps
# PGD-AT out of the "stuck at chance" start that a cold start of PGD-AT on MNIST falls into.
RECIPE = TrainConfig(
    dataset="mnist-subset", model="mnist-cnn", epochs=15, batch_size=100, optimizer="adam", lr=1e-3,
    lr_schedule="multistep", eps=0.3, eps_warmup=3, val_size=500, seed=0,
)
METHOD_PARAMS = {"pgd": {"steps": 10}, "free": {"replays": 4}}
#: Test images (the trainer's seeded ``--test-subset`` choice) that AutoAttack attacks: it is slow on a CPU.
AA_EXAMPLES = 100


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FastrobustError(f"{out} exists and is not a fastrobust demo folder; pass --out with a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def run_demo(out: str = "fastrobust-demo", epochs: int | None = None, methods: str | None = None,
             progress: bool | None = None, echo=print, aa_examples: int = AA_EXAMPLES) -> list[dict]:
    """Train and evaluate each method; print and return the summaries.

    Each model is also attacked with AutoAttack (standard version) on ``aa_examples`` test
    images (0: not); its result goes into the summary as ``aa_acc`` and into the run's ``eval.json``.
    """
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
    for name in names:
        run_dir = root / name
        shutil.rmtree(run_dir, ignore_errors=True)   # a previous demo's run of this method
        cfg = dataclasses.replace(
            RECIPE, method=name, out=str(run_dir), method_params=dict(METHOD_PARAMS.get(name, {})),
            epochs=epochs or RECIPE.epochs, eps_warmup=min(RECIPE.eps_warmup, epochs or RECIPE.epochs),
        )
        echo(f"\n=== {name} ===")
        summary = train(cfg, progress=progress, echo=echo)
        if aa_examples:
            with warnings.catch_warnings():     # the flags are echoed below
                warnings.simplefilter("ignore", GradientMaskingWarning)
                result = evaluate_checkpoint(run_dir, attacks="aa", test_subset=aa_examples, progress=progress)
            summary = {**summary, "aa_acc": result["robust_accuracy"], "aa_examples": result["n"],
                       "aa_seconds": result["attacks"]["aa"]["seconds"]}
            for flag in result["flags"]:
                echo(f"WARNING ({flag['check']}): {flag['message']}")
            echo(f"AutoAttack on {result['n']} test images: {100 * result['robust_accuracy']:.1f}% "
                 f"({result['attacks']['aa']['seconds']:.1f} s) -> {run_dir / 'eval.json'}")
        summaries.append(summary)
    echo("\n" + format_table(summaries, reference="pgd"))
    echo(f"\nruns, metrics and checkpoints in {root}/<method>/ (fastrobust.load_model(path) loads best.pt)")
    return summaries


def format_table(summaries: list[dict], reference: str = "pgd") -> str:
    """A Markdown table of cost and robustness, costs also as a fraction of the reference method."""
    ref = next((s for s in summaries if s["method"] == reference), None)
    with_aa = any(s.get("aa_acc") is not None for s in summaries)
    head = ["method", "epochs", "clean %", "PGD-20 %", *(["AA %"] if with_aa else []), "passes/ex", "train s",
            "passes / ref", "time / ref"]
    rows = []
    for s in summaries:
        ratio = lambda key: f"{s[key] / ref[key]:.2f}" if ref and ref[key] else "-"
        aa = [f"{100 * s['aa_acc']:.1f}" if s.get("aa_acc") is not None else "-"] if with_aa else []
        rows.append([
            s["method"] + collapse_mark(s), str(s["epochs"]), f"{100 * s['test_clean_acc']:.1f}", f"{100 * s['test_robust_acc']:.1f}",
            *aa, f"{s['passes_per_example']:.1f}", f"{s['train_seconds']:.1f}",
            ratio("passes_per_example"), ratio("train_seconds"),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    if summaries:
        s = summaries[0]
        out.append(f"\ntest set: {s['test_examples']} images; robust = {s['test_attack']}; "
                   f"reference for ratios: {reference}; time = training loop only.")
        if with_aa:
            n_aa = next(x["aa_examples"] for x in summaries if x.get("aa_acc") is not None)
            out.append(f"AA = AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; pyautoattack), "
                       f"same eps, on {n_aa} of the test images (`fastrobust eval RUN --attacks aa --test-subset {n_aa}`).")
    return "\n".join(out)
