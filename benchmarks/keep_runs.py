"""Keep the record of a benchmark's finished runs, without their checkpoints.

    python benchmarks/keep_runs.py /work/bench-mnist benchmarks/records/mnist

copies, for every finished run folder of SRC (one with summary.json), its config.yaml, summary.json,
eval.json, eval-aa.json, metrics.jsonl and train.log into DEST/RUN (and SRC's bench.json and
suite.yaml into DEST), replacing what DEST held for those runs. Checkpoints (*.pt) are left out:
they are megabytes each. The machines this project is measured on lose their files between
sessions; the records are what survives in git:

- `fastrobust report DEST` writes the table and plots from them (mean ± std over seeds);
- a copy of DEST as a bench output folder lets `fastrobust bench SUITE --out COPY --seeds ...`
  continue: a recorded run whose evaluations cover what is asked is skipped. A recorded run
  cannot be evaluated again (no checkpoint): a missing evaluation means training it again
  (delete its folder from the copy).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fastrobust.bench.results import BENCH_FILE
from fastrobust.runfolder import CONFIG, EVAL, EVAL_AA, LOG, METRICS, SUMMARY, RunFolder

KEPT = (CONFIG, SUMMARY, EVAL, EVAL_AA, METRICS, LOG)     # the records; checkpoints (*.pt) are left out
BENCH = (BENCH_FILE, "suite.yaml")


def keep(src: Path, dest: Path) -> list[str]:
    """Copy the records of SRC's finished runs into DEST; returns the runs copied."""
    if not src.is_dir():
        raise SystemExit(f"keep_runs: {src} is not a folder (give a `fastrobust bench` output folder)")
    runs = sorted(p for p in src.iterdir() if p.is_dir() and RunFolder(p).summary.is_file())
    if not runs:
        raise SystemExit(f"keep_runs: {src} holds no finished run (no RUN/summary.json)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in BENCH:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    for run in runs:
        target = dest / run.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        for name in KEPT:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
    return [r.name for r in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("src", type=Path, help="a `fastrobust bench` output folder")
    parser.add_argument("dest", type=Path, help="where the records go (e.g. benchmarks/records/mnist)")
    args = parser.parse_args(argv)
    names = keep(args.src, args.dest)
    print(f"kept {len(names)} runs in {args.dest}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
