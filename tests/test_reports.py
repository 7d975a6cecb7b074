import json

import pytest

from fastrobust.cli import main
from fastrobust.errors import FastrobustError
from fastrobust.reports import plot_run


def _write_run(tmp_path, with_schedule):
    lines = []
    for e in range(1, 6):
        rec = {"epoch": e, "val_clean_acc": 0.5 + 0.05 * e, "val_robust_acc": 0.1 * e}
        if with_schedule:
            rec.update(r=min(e, 3), grad_magnitude=10.0 + e, threshold=10.5 if e > 1 else None)
        lines.append(json.dumps(rec))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("with_schedule", [False, True])
def test_plot_writes_png(tmp_path, with_schedule):
    _write_run(tmp_path, with_schedule)
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_plot_cli_and_errors(tmp_path, capsys):
    _write_run(tmp_path, True)
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(FastrobustError, match="does not exist"):
        plot_run(tmp_path / "nothing")
    assert main(["plot", str(tmp_path / "nothing")]) == 2
