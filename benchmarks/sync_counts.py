"""Host-device syncs per training iteration for every registered method, on MNIST and on CIFAR-style data
with crop and flip (the counter of tests/test_syncs.py). Usage:

    OMP_NUM_THREADS=1 python benchmarks/sync_counts.py [--train-subset 1000] [method ...]
"""

import argparse
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_syncs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("methods", nargs="*", default=test_syncs.METHODS)
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--where", action="store_true", help="list the places of the syncs")
    args = parser.parse_args()
    for data in test_syncs.DATA.values():
        data["train_subset"] = args.train_subset
    print(f"{'method':10} " + " ".join(f"{d:>28}" for d in test_syncs.DATA))
    for method in args.methods:
        cells, places = [], {}
        for data in test_syncs.DATA:
            with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
                its, params = test_syncs.count_syncs(mp, __import__("pathlib").Path(tmp), method, data)
            totals = [sum(c.values()) for c in its]
            cells.append(f"{min(totals)}-{max(totals)} (budget {test_syncs.budget(method, params)})")
            for c in its:
                for k, v in c.items():
                    places.setdefault(data, {}).setdefault(k, []).append(v)
        print(f"{method:10} " + " ".join(f"{c:>28}" for c in cells), flush=True)
        if args.where:
            for data, found in places.items():
                for k, v in sorted(found.items()):
                    print(f"    {data}: {k}  per iteration {min(v)}-{max(v)}")


if __name__ == "__main__":
    main()
