"""Benchmarks: suites of training runs compared side by side (``fastrobust bench``, ``fastrobust report``).

- :mod:`.suite`: the suite YAML files (shipped in ``suites/`` or the user's own), loaded and validated.
- :mod:`.runner`: trains and evaluates a suite's runs, resumably, then writes the comparison.
- :mod:`.results`: reads finished run directories into rows, groups the seeds of a run; writes ``results.md``,
  ``results.csv`` and plots.
"""

from .results import Row, SeedGroup, Stat, collect, group_runs, pick_reference, write_report
from .runner import run_suite
from .suite import Suite, load_suite, parse_seeds, parse_suite, shipped_suites

__all__ = ["Row", "SeedGroup", "Stat", "Suite", "collect", "group_runs", "load_suite", "parse_seeds", "parse_suite",
           "pick_reference", "run_suite", "shipped_suites", "write_report"]
