"""Plots of runs: one run's per-epoch metrics (``fastrobust plot RUN_DIR``) and the
comparisons of several runs drawn by ``fastrobust bench`` and ``fastrobust report``.

:func:`plot_run` reads ``metrics.jsonl`` and draws, one panel each: validation
clean and robust accuracy per epoch; the method's attack strength (replay
count ``r`` or step count ``K``) per epoch, when the method has one; the
input-gradient magnitude MG per epoch with the M+ threshold, when logged.

:func:`plot_frontier`, :func:`plot_val_curves` and :func:`plot_schedules` take
the rows of :mod:`fastrobust.bench.results` (one finished run each, or a
``SeedGroup`` of one run's seeds: drawn at its means, with error bars of one
standard deviation on the frontier and a band around the validation curve).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import FastrobustError
from .runfolder import RunFolder

STRENGTH_KEYS = ("r", "K")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        raise FastrobustError(f"{path} does not exist: pass a run directory written by `fastrobust train`")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise FastrobustError(f"{path} is not valid JSON lines ({exc})") from None
    if not records:
        raise FastrobustError(f"{path} holds no epochs yet")
    return records


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(ax) -> None:
    """A legend right of the axes, where it hides no curve."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save(fig, out: str | Path) -> Path:
    """Save atomically (a temporary file moved into place) and close the figure."""
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves to a PNG (default ``RUN_DIR/curves.png``) and return its path."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    strength = next((k for k in STRENGTH_KEYS if any(k in r for r in records)), None)
    has_mg = any(r.get("grad_magnitude") is not None for r in records)
    panels = 1 + (strength is not None) + has_mg
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.8 * panels), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    title = run_dir.name
    summary = RunFolder(run_dir).summary
    if summary.is_file():
        s = json.loads(summary.read_text())
        title = f"{s.get('method')} on {s.get('dataset')} ({s.get('model')}), {run_dir.name}"

    ax = axes.pop(0)
    for key, label in (("val_clean_acc", "validation clean"), ("val_robust_acc", "validation robust (PGD, CW loss)")):
        xs, ys = _series(records, key)
        ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=label)
    ax.set_ylabel("accuracy %")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    if strength is not None:
        ax = axes.pop(0)
        xs, ys = _series(records, strength)
        ax.step(xs, ys, where="mid", color="tab:green")
        ax.set_ylabel(f"{strength} ({'replays' if strength == 'r' else 'attack steps'})")
        ax.grid(alpha=0.3)
    if has_mg:
        ax = axes.pop(0)
        xs, ys = _series(records, "grad_magnitude")
        ax.plot(xs, ys, marker="o", ms=3, color="tab:red", label="MG (input-gradient magnitude)")
        txs, tys = _series(records, "threshold")
        if txs:
            ax.step(txs, tys, where="post", color="gray", ls="--", label="threshold")
        ax.set_ylabel("MG")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.axes[-1].set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, Path(out) if out else RunFolder(run_dir).curves)


# --------------------------------------------------------------------------- comparisons of runs
def _robust_label(rows) -> str:
    evaluated = [r for r in rows if r.evaluation is not None]
    if not evaluated:
        return "test robust accuracy % (summary.json)"
    names = [k for k in (evaluated[0].evaluation.get("attacks") or {}) if k != "clean"]
    from .evaluation.specs import attack_label

    what = attack_label(names[0]) if len(names) == 1 else "worst case of " + ", ".join(map(attack_label, names))
    return f"robust accuracy % ({what})"


def _spread(value) -> float:
    """The standard deviation over seeds of a value (a ``Stat``); 0 for one run's value."""
    return float(getattr(value, "std", 0.0))


def plot_frontier(rows, out: str | Path, ref=None) -> Path:
    """Robust accuracy against training time and against passes per example, one point per run;
    a run with several seeds at its means, with error bars (one standard deviation) on both axes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    cpu = all(r.on_cpu and r.cpu_seconds is not None for r in rows)
    xkeys = (("cpu_seconds" if cpu else "seconds",
              "training CPU seconds (all threads)" if cpu else "training wall seconds (loop only)"),
             ("passes", "passes per example (whole run)"))
    for ax, (attr, xlabel) in zip(axes, xkeys):
        for i, r in enumerate(rows):
            x, y = getattr(r, attr), r.robust
            if x is None or y is None:
                continue
            is_ref = ref is not None and r is ref
            color = "black" if is_ref else f"C{i % 10}"
            if getattr(r, "n_seeds", 1) > 1:
                ax.errorbar([x], [100 * y], xerr=[_spread(x)], yerr=[100 * _spread(y)], fmt="none", ecolor=color,
                            elinewidth=1.0, capsize=3, alpha=0.8, zorder=2)
            ax.scatter([x], [100 * y], s=160 if is_ref else 55, marker="*" if is_ref else "osD^v"[i // 10 % 5],
                       facecolors="none" if r.evaluation is None else color, edgecolors=color, linewidths=1.5,
                       zorder=3)
            seeds = f" (ref, {r.n_seeds} seeds)" if is_ref and getattr(r, "n_seeds", 1) > 1 else " (ref)" if is_ref \
                else f" ({r.n_seeds} seeds)" if getattr(r, "n_seeds", 1) > 1 else ""
            ax.annotate(r.name + seeds, (x, 100 * y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_robust_label(rows))
    hollow = " Hollow: summary.json's end-of-training test numbers (no eval.json)." if any(
        r.evaluation is None for r in rows) else ""
    bars = " Error bars: one standard deviation over a run's seeds." if any(
        getattr(r, "n_seeds", 1) > 1 for r in rows) else ""
    fig.suptitle("cost / robustness: up and to the left is better." + hollow + bars, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def plot_val_curves(rows, out: str | Path) -> Path | None:
    """Per-epoch validation robust accuracy of every run on one chart (None when no run has metrics)."""
    plt = _pyplot()
    rows = [r for r in rows if any(m.get("val_robust_acc") is not None for m in r.metrics)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 5))
    styles = ("-", "--", ":", "-.")
    for i, r in enumerate(rows):
        xs, ys = _series(r.metrics, "val_robust_acc")
        n = getattr(r, "n_seeds", 1)
        line, = ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, ls=styles[(i // 10) % 4],
                        label=r.name + (f" (mean of {n} seeds)" if n > 1 else ""))
        if n > 1:   # a band of one standard deviation over the seeds
            sd = dict(zip(*_series(r.metrics_std, "val_robust_acc")))
            ax.fill_between(xs, [100 * (y - sd.get(x, 0.0)) for x, y in zip(xs, ys)],
                            [100 * (y + sd.get(x, 0.0)) for x, y in zip(xs, ys)], color=line.get_color(), alpha=0.15)
    _integer_epochs(ax)
    ax.set_ylabel("validation robust accuracy % (PGD, CW loss)")
    ax.set_title("validation robust accuracy per epoch (checkpoint selection)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    return _save(fig, out)


def plot_schedules(rows, out: str | Path) -> Path | None:
    """Top: the replay count r or attack steps K per epoch of the dynamic methods (those that log one);
    bottom: the passes per example spent in each epoch, for every run. None when no run has metrics."""
    plt = _pyplot()
    rows = [r for r in rows if any(m.get("epoch_passes") is not None for m in r.metrics)]
    dynamic = []
    for r in rows:
        key = next((k for k in STRENGTH_KEYS if any(m.get(k) is not None for m in r.metrics)), None)
        if key is not None:
            dynamic.append((r, key))
    if not rows:
        return None
    fig, axes = plt.subplots(2 if dynamic else 1, 1, figsize=(9.5, 7.5 if dynamic else 4.2), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    if dynamic:
        ax = axes.pop(0)
        for i, (r, key) in enumerate(dynamic):
            xs, ys = _series(r.metrics, key)
            n = getattr(r, "n_seeds", 1)
            ax.step(xs, ys, where="mid", lw=1.8, ls=("-", "--", ":")[i // 10 % 3],
                    label=f"{r.name} ({key}" + (f", mean of {n} seeds)" if n > 1 else ")"))
        ax.set_ylabel("r (replays) or K (attack steps)")
        ax.set_title("attack strength of the dynamic methods per epoch", fontsize=10)
        ax.grid(alpha=0.3)
        _legend_outside(ax)
    ax = axes.pop(0)
    for i, r in enumerate(rows):
        xs, ys = _series(r.metrics, "epoch_passes")
        ax.step(xs, ys, where="mid", lw=1.5, ls=("-", "--", ":")[i // 10 % 3], label=r.name)
    ax.set_ylabel("passes per example in the epoch")
    ax.set_title("cost per epoch", fontsize=10)
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    return _save(fig, out)
