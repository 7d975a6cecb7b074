"""Print the ``fastat-small`` table beside the FastAT Benchmark's published CIFAR-10 figures.

    python benchmarks/fastat_compare.py benchmarks/records/fastat-small \
        [--reference ../shared/reference/fastat-benchmark.md]

Reads every finished run of a ``fastrobust bench fastat-small`` folder (``RUN`` for the suite's seed,
``RUN-sN`` for seed N: summary.json, eval.json and eval-aa.json), groups a run's seeds and prints, as
markdown, the mean ± sample standard deviation of clean, PGD-50x10 and AutoAttack accuracy and of passes
per example, the passes and training CPU seconds relative to ``pgd-wa``, and beside them the benchmark's
AutoAttack and PGD-50 (read from the reference file's ``## cifar10`` table). Then the two rank orders and
their Spearman and Kendall correlations over the methods both have. Nothing is computed from figures typed
in here: the benchmark's come from the reference file, ours from the records.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from itertools import combinations
from pathlib import Path

# fastrobust run name -> the benchmark's method name (the runs the benchmark has; the seeds' methods have none)
NAMES = {"pgd-wa": "pgd_at_wa", "pgd": "pgd_at", "nuat": "nu_at", "liet": "liet", "fgsm-pgi": "fgsm_pgi",
         "fgsm-fuap": "fgsm_fuap", "fgsm-cuap": "fgsm_cuap", "fgsm-uap": "fgsm_uap", "gat": "gat",
         "fgsm-rs-cs": "fgsm_rs_cs", "fgsm-pco": "fgsm_pco", "gradalign": "grad_align", "n-fgsm": "n_fgsm",
         "n-aaer": "n_aaer", "zerograd": "zero_grad", "free": "free_at", "fgsm-rs": "fgsm_rs", "elle": "elle",
         "fgsm-mep-cs": "fgsm_mep_cs", "ssat": "ssat"}


def benchmark_cifar10(path: Path) -> dict[str, dict[str, float]]:
    """The reference file's CIFAR-10 rows: method -> {clean, pgd50, aa, aa_std}."""
    rows, inside = {}, False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## cifar10"
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not inside or len(cells) < 5 or cells[0] in ("method", "---"):
            continue
        aa, _, std = cells[4].partition("±")
        rows[cells[0]] = {"clean": float(cells[1]), "pgd50": float(cells[3]), "aa": float(aa),
                          "aa_std": float(std) if std else float("nan")}
    return rows


def read_runs(folder: Path) -> dict[str, list[dict]]:
    """Run name -> one record per finished, evaluated seed."""
    runs: dict[str, list[dict]] = {}
    for d in sorted(folder.iterdir()):
        files = [d / f for f in ("summary.json", "eval.json", "eval-aa.json")]
        if not all(f.is_file() for f in files):
            continue
        s, e, a = (json.loads(f.read_text()) for f in files)
        name, _, seed = d.name.rpartition("-s")
        if not (name and seed.isdigit()):
            name = d.name
        runs.setdefault(name, []).append({
            "clean": 100 * e["clean_accuracy"], "pgd": 100 * e["robust_accuracy"], "aa": 100 * a["robust_accuracy"],
            "passes": s["passes_per_example"], "cpu": s["train_cpu_seconds"], "best": s.get("best_weights", "raw")})
    return runs


def fmt(values: list[float], digits: int = 1) -> str:
    m = statistics.fmean(values)
    return f"{m:.{digits}f}" if len(values) < 2 else f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ranks(values: list[float]) -> list[float]:
    """Rank 1 = largest; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return num / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def kendall(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b."""
    conc = disc = tx = ty = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    return (conc - disc) / ((conc + disc + tx) * (conc + disc + ty)) ** 0.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--reference", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared/reference/fastat-benchmark.md")
    args = p.parse_args(argv)
    if not args.reference.is_file():
        print(f"error: no reference file at {args.reference}; pass --reference PATH to fastat-benchmark.md",
              file=sys.stderr)
        return 2
    bench, runs = benchmark_cifar10(args.reference), read_runs(args.folder)
    if "pgd-wa" not in runs:
        print(f"error: {args.folder} has no finished pgd-wa run (the CPU-time reference)", file=sys.stderr)
        return 2
    ref_cpu = statistics.fmean(r["cpu"] for r in runs["pgd-wa"])
    col = lambda name, key: [r[key] for r in runs[name]]
    order = sorted(runs, key=lambda n: -statistics.fmean(col(n, "pgd")))
    ref_passes = statistics.fmean(r["passes"] for r in runs["pgd-wa"])
    print("| run | seeds | clean % | PGD-50x10 % | AutoAttack % | passes/ex | passes / `pgd-wa` | CPU / `pgd-wa` "
          "| best.pt (raw/avg) | theirs: AutoAttack % | theirs: PGD-50 % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in order:
        b = bench.get(NAMES.get(n, ""), {})
        best = col(n, "best")
        avg = sum(w != "raw" for w in best)
        print(f"| `{n}` | {len(runs[n])} | {fmt(col(n, 'clean'))} | {fmt(col(n, 'pgd'))} | {fmt(col(n, 'aa'))} "
              f"| {fmt(col(n, 'passes'))} | {statistics.fmean(col(n, 'passes')) / ref_passes:.2f} "
              f"| {statistics.fmean(col(n, 'cpu')) / ref_cpu:.2f} | {len(best) - avg}/{avg} "
              f"| {b['aa'] if b else '-'} | {b['pgd50'] if b else '-'} |")
    both = [n for n in order if NAMES.get(n) in bench]
    ours_pgd = [statistics.fmean(col(n, "pgd")) for n in both]
    ours_aa = [statistics.fmean(col(n, "aa")) for n in both]
    theirs = [bench[NAMES[n]]["aa"] for n in both]
    print(f"\nRanks over the {len(both)} runs both have (1 = most robust): ours by PGD-50x10, ours by AutoAttack, "
          "theirs by AutoAttack")
    for n, a, b, c in zip(both, ranks(ours_pgd), ranks(ours_aa), ranks(theirs)):
        print(f"  {n:12s} {a:5.1f} {b:5.1f} {c:5.1f}")
    for label, ours in (("PGD-50x10", ours_pgd), ("AutoAttack", ours_aa)):
        print(f"ours by {label} against theirs by AutoAttack: Spearman {spearman(ours, theirs):+.2f}, "
              f"Kendall tau-b {kendall(ours, theirs):+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
