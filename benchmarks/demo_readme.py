"""README's demo table against the output of today's ``fastrobust demo``.

    python benchmarks/demo_readme.py            # run the demo, compare: exit 1 (and say what) when they drift
    python benchmarks/demo_readme.py --write    # run the demo, put its table into README.md

Only the columns that the same code gives on every run are compared (``fastrobust.demo.DETERMINISTIC_COLUMNS``:
the demo runs torch on one thread with a fixed seed); the seconds vary with the machine and its load. The
demo's runs go to a temporary folder. tests/test_demo_readme.py runs the same comparison.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- demo-table[^>]*-->\n```\n)(.*?)(```\n<!-- /demo-table -->)", re.S)


def readme_table(readme: Path = README) -> str:
    """The demo table of README.md (between its demo-table markers)."""
    found = BLOCK.search(readme.read_text())
    if not found:
        raise SystemExit(f"{readme}: no <!-- demo-table --> block")
    return found.group(2)


def demo_table(out: str | None = None, echo=print) -> str:
    """Run the demo (into ``out``, or a temporary folder) and return the table it prints (with its notes)."""
    from fastrobust.demo import format_table, run_demo

    with tempfile.TemporaryDirectory(prefix="fastrobust-demo-") as tmp:
        summaries = run_demo(out=out or str(Path(tmp) / "demo"), progress=False, echo=echo)
    return format_table(summaries, reference="pgd") + "\n"


def main(argv: list[str] | None = None) -> int:
    from fastrobust.demo import table_drift

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--write", action="store_true", help="write the demo's table into README.md")
    opts = args.parse_args(argv)
    start = time.perf_counter()
    table = demo_table()
    print(f"\ndemo: {time.perf_counter() - start:.0f} s")
    if opts.write:
        text = README.read_text()
        README.write_text(BLOCK.sub(lambda m: m.group(1) + table + m.group(3), text, count=1))
        print(f"wrote the table into {README}")
        return 0
    drift = table_drift(readme_table(), table)
    for line in drift:
        print(f"README's demo table drifted: {line}")
    if not drift:
        print("README's demo table matches the demo's output (deterministic columns)")
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
