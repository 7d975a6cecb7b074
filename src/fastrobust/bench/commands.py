"""The ``bench`` and ``report`` subcommands: their argument parsers and handlers (used by :mod:`fastrobust.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError

BENCH_DESCRIPTION = """\
Train and evaluate a suite of runs side by side (same data, model, seeds and epochs), then
write OUT/results.md (a table), OUT/results.csv and PNG plots: robust accuracy against
training time and against passes (the cost/robustness frontier), per-epoch validation
robust accuracy, and the r/K schedules of the dynamic methods.

The table gives per run: clean and robust accuracy under the suite's attacks (PGD-50x10,
AutoAttack with --aa, ...), passes per example, training-loop seconds (and CPU seconds on
the CPU), and both costs and accuracies relative to the suite's reference run (PGD-AT).

With --seeds (or a suite's `seeds:`), every run is trained once per seed, in its own folder
(OUT/RUN for the suite's own seed, OUT/RUN-sSEED for the others), and the table gives the
mean ± standard deviation over the seeds (column `n seeds`); results.csv has one row per
seed, and the frontier plot draws the spread as error bars.

Stopped halfway, the same command continues: finished runs (summary.json and eval.json)
are skipped and the unfinished one resumes from its last.pt.
"""

BENCH_EPILOG = """\
examples:
  fastrobust bench --list
  fastrobust bench mnist-quick                          # every method on the shipped MNIST subset, a few minutes
  fastrobust bench mnist --data-dir ~/data/mnist --out bench-mnist
  fastrobust bench cifar10-small --data-dir ~/data/cifar10-jpeg --methods mdeat,free
  fastrobust bench cifar10-deat --device cuda --aa --data-dir ~/data
  fastrobust bench mnist --data-dir ~/data/mnist --seeds 3     # seeds 0,1,2: mean ± std per run
  fastrobust bench my-suite.yaml --dry-run              # check your own suite and show the plan
  fastrobust bench imagenet-deat --data-dir DIR --print-config free-4 > free-4.yaml
  torchrun --nproc_per_node=8 -m fastrobust train --config free-4.yaml   # one run on 8 GPUs; then
  fastrobust bench imagenet-deat --data-dir DIR          # evaluates the trained runs, writes the table

A suite file (YAML): name, description, reference (a run name), seeds (optional default
for --seeds), common (configuration keys
shared by all runs, as in a run's config.yaml), evaluation (attacks, test_subset,
batch_size, aa_subset: with --aa, AutoAttack on these first N test images in an evaluation of
its own, RUN/eval-aa.json, its column `AutoAttack (N)`) and runs (name -> method, params, and per-run alpha/lr/optimizer keys).
See the shipped suites in fastrobust/bench/suites/ for examples.
"""

REPORT_DESCRIPTION = """\
Write the benchmark table (results.md, results.csv) and plots from existing run
directories: a `fastrobust bench` output folder, or run directories of `fastrobust train`.
Accuracies come from each run's eval.json (`fastrobust eval`); a run without one uses the
end-of-training test numbers of its summary.json, marked in the table. Runs that differ only
in their seed (config.yaml) are one row: mean ± standard deviation over the seeds, one CSV
row per seed, error bars in the frontier plot.
"""


def add_parsers(sub) -> None:
    """Add ``bench`` and ``report`` to the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    b = sub.add_parser("bench", help="train and evaluate a suite of methods side by side; table and plots",
                       description=BENCH_DESCRIPTION, epilog=BENCH_EPILOG, formatter_class=fmt)
    b.add_argument("suite", nargs="?", metavar="SUITE",
                   help="a shipped suite (mnist-quick, mnist, cifar10-small, cifar10-deat, cifar100-deat, imagenet-deat; "
                        "see --list) or the path of your own suite YAML file")
    b.add_argument("--out", metavar="DIR", help="output folder (default ./bench-SUITE); rerun with the same "
                                                "--out to continue a stopped benchmark")
    b.add_argument("--methods", metavar="A,B", help="only these runs (run or method names); the suite's "
                                                   "reference run is always included")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the suite's device (default auto)")
    b.add_argument("--data-dir", metavar="DIR", help="folder holding the suite's data set (for imagefolder, "
                                                    "the folder with train/ and test/)")
    b.add_argument("--dataset", metavar="NAME", help="override the suite's data set (e.g. imagefolder for a "
                                                     "JPEG copy of CIFAR-10)")
    b.add_argument("--aa", action="store_true", help="add AutoAttack (standard, via pyautoattack) to the evaluation; on the suite's "
                                                   "aa_subset first test images when it names one (MNIST 500, "
                                                   "CIFAR-10 small 200), in RUN/eval-aa.json")
    b.add_argument("--seeds", metavar="N|A,B", help="train every run once per seed: N = the suite's seed and the "
                                                   "N-1 after it (3: seeds 0,1,2 in the shipped suites), or a "
                                                   "list such as 0,2,5 (one seed S alone: S,); default: the "
                                                   "suite's seeds: key, else its one seed")
    b.add_argument("--list", action="store_true", help="list the shipped suites and exit")
    b.add_argument("--dry-run", action="store_true", help="check the suite and print what would be run, then exit")
    b.add_argument("--print-config", metavar="RUN", help="print one run's configuration (YAML for `fastrobust train "
                                                         "--config`, its folder under --out) and exit: to train the "
                                                         "run with torchrun, then evaluate it with `fastrobust bench`")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("report", help="the benchmark table and plots from existing run directories",
                       description=REPORT_DESCRIPTION, formatter_class=fmt,
                       epilog="examples:\n  fastrobust report bench-mnist\n"
                              "  fastrobust report runs/pgd runs/mdeat runs/free --out cmp --reference pgd\n"
                              "  fastrobust report runs/pgd-seed0 runs/pgd-seed1 runs/free-seed0 runs/free-seed1\n")
    r.add_argument("dirs", nargs="+", metavar="DIR", help="a bench output folder or run directories")
    r.add_argument("--out", metavar="DIR", help="where to write (default: the bench folder when one is given, "
                                                "else ./fastrobust-report)")
    r.add_argument("--reference", metavar="NAME", help="the run (name or method) that costs and accuracies are "
                                                       "compared with (default: the suite's, else a pgd run)")


def run_command(args) -> bool:
    """Handle ``bench``/``report``; False when ``args`` is another command."""
    if args.command == "bench":
        bench(args)
    elif args.command == "report":
        report(args)
    else:
        return False
    return True


def bench(args) -> None:
    from .runner import run_suite
    from .suite import load_suite, shipped_suites

    if args.list:
        for name, description in shipped_suites().items():
            print(f"{name:15s} {description}")
        return
    if not args.suite:
        raise ConfigError("name a suite: one of " + ", ".join(shipped_suites()) + " (`fastrobust bench --list`), "
                          "or the path of your own suite YAML file")
    if args.print_config:
        print_config(load_suite(args.suite), args.print_config, args)
        return
    try:
        run_suite(load_suite(args.suite), args.out, methods=args.methods, device=args.device, data_dir=args.data_dir,
                  dataset=args.dataset, aa=args.aa, seeds=args.seeds, progress=False if args.no_progress else None,
                  dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("fastrobust bench: stopped. Run the same command again to continue: finished runs are skipped and "
              "the unfinished one resumes from its last.pt", file=sys.stderr)
        raise


def print_config(suite, name: str, args) -> None:
    """Print run ``name``'s configuration as ``fastrobust train --config`` reads it, ``out`` = its bench folder."""
    import yaml

    from .suite import check_runs

    names = [r.name for r in suite.runs]
    if name not in names:
        raise ConfigError(f"--print-config: {name!r} is not a run of suite {suite.name!r}; its runs: {', '.join(names)}")
    overrides = {"device": args.device, "data_dir": args.data_dir, "dataset": args.dataset}
    check_runs(suite, **overrides)
    seeds = suite.resolve_seeds(args.seeds)
    if len(seeds) != 1:
        raise ConfigError(f"--print-config prints one run with one seed; --seeds gives {len(seeds)} "
                          f"({', '.join(map(str, seeds))}): pass one seed, e.g. --seeds {seeds[-1]},")
    out = Path(args.out) if args.out else Path(f"bench-{suite.name}")
    cfg = suite.train_config(suite.run(name), out / suite.folder(name, seeds[0]), seed=seeds[0], **overrides)
    print(f"# run {name!r} of suite {suite.source}; train it with (under torchrun: torchrun --nproc_per_node=N -m "
          f"fastrobust train ...)\n#   fastrobust train --config THIS_FILE\n# then `fastrobust bench {suite.name}"
          f"{' --out ' + str(out) if args.out else ''}` evaluates it and writes the table")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def report(args) -> None:
    from .results import BENCH_FILE, collect, pick_reference, write_report

    rows, unfinished, suggested = collect(args.dirs)
    ref = pick_reference(rows, args.reference, suggested)
    out = args.out
    if out is None:
        out = args.dirs[0] if len(args.dirs) == 1 and (Path(args.dirs[0]) / BENCH_FILE).is_file() else "fastrobust-report"
    written = write_report(rows, out, ref, unfinished, title="fastrobust report",
                           intro="From: " + ", ".join(f"`{d}`" for d in args.dirs))
    print((Path(out) / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
