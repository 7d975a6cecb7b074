"""Replaying the DEAT authors' run logs (../shared/reference/deat-logs): the MG column of each M+ run, fed
into fastrobust's M+ schedule, gives the step/replay schedule that the log's per-epoch seconds show."""

import re

import pytest
import torch

from helpers import SHARED, make_method

LOGS = SHARED / "reference" / "deat-logs"
pytestmark = pytest.mark.skipif(not LOGS.is_dir(), reason=f"the DEAT reference logs are not here ({LOGS} is absent)")

# method, log, the run's settings (from the log's first line), its level name and level in epoch 0
RUNS = [
    ("mdeat", "mdeat", dict(alpha=10 / 255, r_max=8), "r", 1),
    ("mpgd", "mpgd", dict(alpha=2 / 255, k_max=7), "K", 0),
    ("mtrades", "mtrades", dict(alpha=2 / 255, k_max=10), "K", 0),
    ("mmart", "mmart", dict(alpha=2 / 255, k_max=10), "K", 0),
]


def read_log(path):
    """Per epoch: (seconds, MG). Rows are `[date] - epoch seconds LR ... MG last-accuracy`."""
    rows = []
    for line in path.read_text().splitlines():
        m = re.match(r"\[[^\]]+\] - (\d+)\s+([\d.]+)\s+(.*)$", line)
        if m:
            numbers = m.group(3).split()
            rows.append((int(m.group(1)), float(m.group(2)), float(numbers[-2])))
    assert [r[0] for r in rows] == list(range(50))
    return [(s, mg) for _, s, mg in rows]


def levels_from_seconds(seconds, first):
    """One more unit of seconds per extra replay or step: the unit is epoch 1's extra over epoch 0's."""
    unit = seconds[1] - seconds[0]
    return [first + round((s - seconds[0]) / unit) for s in seconds]


@pytest.mark.parametrize("name,log,settings,level,first", RUNS, ids=[r[0] for r in RUNS])
def test_mplus_schedule_replays_the_authors_log(name, log, settings, level, first):
    rows = read_log(LOGS / f"{log}-output_pre.log")
    expected = levels_from_seconds([s for s, _ in rows], first)
    alpha = settings.pop("alpha")
    _, method, _, _ = make_method(name, epochs=50, eps=8 / 255, alpha=alpha, gamma=1.01, **settings)
    used = []
    for t, (_, mg) in enumerate(rows):
        method.schedule_.mg_sum = torch.tensor(mg, dtype=torch.float64)
        method.on_epoch_end(t)
        used.append(method.state()[level])
    assert used == expected
    if name == "mdeat":    # METHODS.md: r = 1,2,2,3x5,4x19,5,5,6x13,7,7,8x6
        assert used == [1, 2, 2] + [3] * 5 + [4] * 19 + [5] * 2 + [6] * 13 + [7] * 2 + [8] * 6
