"""Plots of a run's per-epoch metrics (``fastrobust plot RUN_DIR``).

Reads ``metrics.jsonl`` and draws, one panel each: validation clean and
robust accuracy per epoch; the method's attack strength (replay count ``r``
or step count ``K``) per epoch, when the method has one; the input-gradient
magnitude MG per epoch with the M+ threshold, when logged.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import FastrobustError

STRENGTH_KEYS = ("r", "K")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
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


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves to a PNG (default ``RUN_DIR/curves.png``) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    strength = next((k for k in STRENGTH_KEYS if any(k in r for r in records)), None)
    has_mg = any(r.get("grad_magnitude") is not None for r in records)
    panels = 1 + (strength is not None) + has_mg
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.8 * panels), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    title = run_dir.name
    summary = run_dir / "summary.json"
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
    out = Path(out) if out else run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
