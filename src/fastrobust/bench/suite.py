"""Benchmark suites: YAML files naming training runs that share one setting.

A suite looks like this (the shipped ones are in ``bench/suites/``)::

    name: mnist-quick
    description: one line shown by `fastrobust bench --list`
    reference: pgd              # the run that costs and accuracies are compared with
    seeds: 3                    # optional: train every run with 3 seeds (default: the one in common)
    common:                     # TrainConfig keys shared by every run (data, model, seed, epochs, eps, ...)
      dataset: mnist-subset
      epochs: 5
    evaluation:                 # what `fastrobust eval` runs on each trained model
      attacks: [clean, pgd20]
      test_subset: 1000
    runs:                       # run name -> method, its parameters, per-run optimisation keys
      natural:                  # method defaults to the run's name
      pgd: {params: {steps: 10}, alpha: 0.01}
      free-8: {method: free, params: {replays: 8}}

Everything is checked when the suite is loaded, before any training: keys,
method names and parameters, and (for the named data sets) the resolved
configuration of every run.

Seeds: a run trained with the suite's own seed (``common.seed``, default 0)
lives in ``OUT/<run>/``; with another seed S in ``OUT/<run>-sS/``
(:meth:`Suite.folder`). ``seeds: N`` (or ``--seeds N``) means the suite's seed
and the N-1 after it (0, 1, 2 for ``3`` in the shipped suites); ``seeds: [0, 2]``
or ``--seeds 0,2`` names them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import RESUME_FREE, TrainConfig, parse_number, resolve, same_setting, same_value, validate
from ..errors import ConfigError

TOP_KEYS = ("name", "description", "reference", "seeds", "common", "evaluation", "runs")
EVAL_KEYS = ("attacks", "test_subset", "batch_size", "aa_subset")
# per-run keys: how a method is optimised may differ between runs; everything else is shared
RUN_CONFIG_KEYS = ("alpha", "epochs", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "lr_milestones",
                   "lr_gamma", "grad_clip", "wa", "wa_warmup", "label_smoothing", "guard", "guard_passes")
RUN_KEYS = ("method", "params", *RUN_CONFIG_KEYS)
COMMON_KEYS = tuple(k for k in TrainConfig.keys() if k not in ("method", "method_params", "out"))
NUMBER_KEYS = ("eps", "alpha", "lr")
DEFAULT_ATTACKS = ("clean", "pgd20")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
SEED_FOLDER = re.compile(r"(?P<run>.+)-s(?P<seed>\d+)")   # OUT/<run>-s<seed>: a run trained with another seed


@dataclass
class RunSpec:
    """One run of a suite: a method, its (given) parameters and its per-run configuration keys."""

    name: str
    method: str
    params: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    description: str
    source: str                         # the YAML file it was read from
    reference: str
    common: dict
    attacks: list[str]
    runs: list[RunSpec]
    test_subset: int | None = None      # evaluation subset (default: the runs' test_subset)
    eval_batch_size: int = 500
    aa_subset: int | None = None        # with --aa: AutoAttack on these first N test images, its own eval-aa.json
    text: str = ""                      # the YAML as written, comments included
    seeds: list[int] | None = None      # the suite's `seeds:` (default: [base_seed])

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)

    @property
    def base_seed(self) -> int:
        """The suite's own seed (``common.seed``, else TrainConfig's default): its runs keep their folder names."""
        return int(self.common.get("seed", TrainConfig.seed))

    def folder(self, run: str, seed: int) -> str:
        """The folder name of ``run`` trained with ``seed``: ``run`` for the suite's own seed, else ``run-sSEED``."""
        return run if seed == self.base_seed else f"{run}-s{seed}"

    def owns_folder(self, name: str) -> bool:
        """Whether ``name`` is the folder of one of the suite's runs (with any seed)."""
        m = SEED_FOLDER.fullmatch(name)
        return any(name == r.name or (m is not None and m["run"] == r.name) for r in self.runs)

    def resolve_seeds(self, seeds: Any = None) -> list[int]:
        """The seeds to train: ``seeds`` (``--seeds``) when given, else the suite's ``seeds:``, else its own seed."""
        if seeds is not None:
            return parse_seeds(seeds, self.base_seed)
        return list(self.seeds) if self.seeds else [self.base_seed]

    def train_config(self, run: RunSpec, out: str | Path | None = None, **overrides: Any) -> TrainConfig:
        """The run's configuration: common keys, then the run's own, then ``overrides`` that are not None."""
        values = {**self.common, **run.config, **{k: v for k, v in overrides.items() if v is not None}}
        cfg = TrainConfig().update(values, f"suite {self.source}")
        cfg.method, cfg.method_params, cfg.out = run.method, dict(run.params), None if out is None else str(out)
        cfg.model_options = dict(cfg.model_options)
        return cfg

    def select(self, names: str | list[str] | None) -> tuple[list[RunSpec], list[str]]:
        """The runs named (by run name or method name), always with the reference; plus notes to print."""
        if not names:
            return list(self.runs), []
        wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        wanted = [n for n in wanted if n]
        chosen: set[str] = set()
        for n in wanted:
            hits = [r.name for r in self.runs if n in (r.name, r.method)]
            if not hits:
                raise ConfigError(f"--methods: {n!r} is not a run of suite {self.name!r}. Its runs: "
                                  f"{', '.join(r.name for r in self.runs)}")
            chosen.update(hits)
        notes = []
        if self.reference not in chosen:
            chosen.add(self.reference)
            notes.append(f"the reference run {self.reference!r} is included: costs and accuracies are compared with it")
        return [r for r in self.runs if r.name in chosen], notes


# ---------------------------------------------------------------------------
def shipped_dir():
    return resources.files("fastrobust.bench") / "suites"


def shipped_suites() -> dict[str, str]:
    """Names of the suites shipped in the package, with their one-line descriptions."""
    out = {}
    for entry in sorted(shipped_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[:-5]] = str(data.get("description", "")) if isinstance(data, dict) else ""
    return out


def load_suite(name_or_path: str | Path) -> Suite:
    """Load and validate a shipped suite (by name) or the user's own YAML file (by path)."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.is_file() or "/" in text_name:
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist (give a shipped suite name, "
                              f"one of {', '.join(shipped_suites())}, or the path of a YAML file)")
        return parse_suite(path.read_text(), str(path))
    entry = shipped_dir() / f"{text_name}.yaml"
    if not entry.is_file():
        raise ConfigError(f"unknown suite {text_name!r}. Shipped suites: {', '.join(shipped_suites())} "
                          f"(`fastrobust bench --list`); or pass the path of your own YAML file")
    return parse_suite(entry.read_text(), f"{text_name} (shipped)")


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    """Parse and validate a suite's YAML text; every error names the file, the place and the fix."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite {source} is not valid YAML: {exc}") from None
    where = f"suite {source}"
    _mapping(data, where, "the file")
    _known_keys(data, TOP_KEYS, where, "top-level key")
    for key in ("name", "reference", "runs"):
        if data.get(key) in (None, "", {}):
            raise ConfigError(f"{where}: missing {key!r}" + {
                "reference": " (name the run, e.g. pgd, that costs and accuracies are compared with)",
                "runs": " (a mapping of run names to methods and parameters)",
                "name": " (the suite's name)"}[key])
    common = _common(data.get("common") or {}, where)
    seeds = None if data.get("seeds") is None else parse_seeds(
        data["seeds"], int(common.get("seed", TrainConfig.seed)), f"{where}: seeds")
    attacks, test_subset, eval_batch, aa_subset = _evaluation(data.get("evaluation") or {}, where)
    runs_data = _mapping(data["runs"], where, "'runs'")
    runs = [_run(str(name), spec, where) for name, spec in runs_data.items()]
    reference = str(data["reference"])
    if reference not in runs_data:
        raise ConfigError(f"{where}: reference {reference!r} is not one of its runs ({', '.join(runs_data)})")
    suite = Suite(name=str(data["name"]), description=str(data.get("description") or ""), source=source,
                  reference=reference, common=common, attacks=attacks, runs=runs, test_subset=test_subset,
                  eval_batch_size=eval_batch, aa_subset=aa_subset, text=text, seeds=seeds)
    check_folders(suite, suite.resolve_seeds())
    check_runs(suite)
    return suite


def check_runs(suite: Suite, **overrides: Any) -> None:
    """Resolve and validate every run's configuration (when the data set's facts are known without loading it)."""
    from ..data import DATASETS, list_datasets
    from ..methods import get_method

    for run in suite.runs:
        cfg = suite.train_config(run, **overrides)
        if cfg.dataset not in list_datasets() and ":" not in cfg.dataset:   # or a package.module:factory
            raise ConfigError(f"suite {suite.source}: unknown dataset {cfg.dataset!r}; choose one of "
                              f"{', '.join(list_datasets())}")
        info = DATASETS.get(cfg.dataset)
        if info is None:   # an image folder or a user's factory: checked when its data is loaded
            continue
        method_cls = get_method(run.method)
        try:
            resolved = resolve(cfg, info, method_cls)
            validate(resolved)
            method_cls.check_config(resolved.eps, resolved.alpha, resolved.method_params)
        except ConfigError as exc:
            raise ConfigError(f"suite {suite.source}, run {run.name!r}: {exc}") from None


def check_folders(suite: Suite, seeds: list[int]) -> None:
    """Refuse a run whose name is another run's folder for one of ``seeds`` (``pgd-s1`` next to ``pgd``)."""
    names = {r.name for r in suite.runs}
    for run in suite.runs:
        for seed in seeds:
            folder = suite.folder(run.name, seed)
            if folder != run.name and folder in names:
                raise ConfigError(f"suite {suite.source}: run {folder!r} has the name of the folder of run "
                                  f"{run.name!r} with seed {seed}; rename it (a name not ending in -s<number>)")


def parse_seeds(value: Any, base: int = 0, where: str = "--seeds") -> list[int]:
    """Seeds from ``N`` (the N seeds ``base``, ``base``+1, ...), ``"0,2,5"`` or a list of integers.

    A single seed other than the first N is written with a comma: ``"4,"``.
    """
    fix = (f"give a number of seeds such as 3 (seeds {', '.join(str(base + i) for i in range(3))}) or a list of "
           f"different seeds >= 0 such as 0,2,5")
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number of seeds; {fix}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: {value} is not a number of seeds (at least 1; a single seed S is "
                              f"written with a comma, S,); {fix}")
        return list(range(base, base + value))
    if isinstance(value, str):
        text = value.strip()
        if "," not in text:
            try:
                return parse_seeds(int(text), base, where)
            except ValueError:
                raise ConfigError(f"{where}: {value!r} is not a number of seeds; {fix}") from None
        parts = [p.strip() for p in text.split(",")]
        if any(p == "" for p in parts[:-1]) or all(p == "" for p in parts):
            raise ConfigError(f"{where}: {value!r} has an empty entry; {fix}")
        items: list[Any] = [p for p in parts if p != ""]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{where}: {value!r} is not a number of seeds or a list of seeds; {fix}")
    seeds = []
    for item in items:
        try:
            seed = int(item) if not isinstance(item, (bool, float)) else None
        except (TypeError, ValueError):
            seed = None
        if seed is None or seed < 0:
            raise ConfigError(f"{where}: seed {item!r} is not an integer >= 0; {fix}")
        if seed in seeds:
            raise ConfigError(f"{where}: seed {seed} is given twice; {fix}")
        seeds.append(seed)
    if not seeds:
        raise ConfigError(f"{where}: no seeds given; {fix}")
    return seeds


# ---------------------------------------------------------------------------
def _mapping(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {what} must be a mapping of keys to values, got {type(value).__name__}")
    return value


def _known_keys(data: dict, allowed: tuple, where: str, what: str, hint: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown {what} {key!r}. Allowed: {', '.join(allowed)}{hint}")


def _numbers(values: dict, where: str) -> dict:
    out = dict(values)
    for key in NUMBER_KEYS:
        if out.get(key) is not None:
            out[key] = parse_number(out[key], f"{where}: {key}")
    return out


def _common(common: Any, where: str) -> dict:
    common = _mapping(common, where, "'common'")
    _known_keys(common, COMMON_KEYS, where, "key in 'common'",
                " (method and method parameters belong to each run under 'runs')")
    out = _numbers(common, f"{where}, common")
    if "seed" in out and (isinstance(out["seed"], bool) or not isinstance(out["seed"], int) or out["seed"] < 0):
        raise ConfigError(f"{where}: common.seed must be an integer >= 0, got {out['seed']!r}")
    if "model_options" in out:
        out["model_options"] = dict(_mapping(out["model_options"], where, "common.model_options"))
    return out


def _evaluation(ev: Any, where: str) -> tuple[list[str], int | None, int, int | None]:
    ev = _mapping(ev, where, "'evaluation'")
    _known_keys(ev, EVAL_KEYS, where, "key in 'evaluation'")
    attacks = ev.get("attacks", list(DEFAULT_ATTACKS))
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, str) for a in attacks):
        raise ConfigError(f"{where}: evaluation.attacks must be a list of attack names, e.g. [clean, pgd50x10]")
    attacks = check_attacks(attacks, where)
    subset, batch, aa_subset = ev.get("test_subset"), ev.get("batch_size", 500), ev.get("aa_subset")
    for key, value, allow_none in (("test_subset", subset, True), ("batch_size", batch, False),
                                   ("aa_subset", aa_subset, True)):
        if (value is None and not allow_none) or (value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1)):
            raise ConfigError(f"{where}: evaluation.{key} must be an integer >= 1, got {value!r}")
    if "aa" in attacks and aa_subset is not None:
        raise ConfigError(f"{where}: evaluation.aa_subset is the AutoAttack of --aa on its own images; "
                          f"take 'aa' out of evaluation.attacks, or drop aa_subset")
    return attacks, subset, batch, aa_subset


def check_attacks(attacks: list[str], where: str = "evaluation") -> list[str]:
    """Refuse attack names the evaluation does not know (when the evaluation package can say)."""
    try:
        from ..evaluation import parse_attacks
    except ImportError:   # an older evaluation module without the parser: checked when it runs
        return list(attacks)
    try:
        parse_attacks(list(attacks))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return list(attacks)


def _run(name: str, spec: Any, where: str) -> RunSpec:
    from ..methods import get_method

    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: run name {name!r} must be letters, digits, '.', '_', '+' or '-' "
                          f"(it names the run's folder)")
    spec = {} if spec is None else _mapping(spec, where, f"run {name!r}")
    here = f"{where}, run {name!r}"
    _known_keys(spec, RUN_KEYS, here, "key",
                " (keys shared by all runs, such as dataset, model, epochs, eps, seed, batch_size, go in 'common')")
    method = str(spec.get("method", name))
    try:
        method_cls = get_method(method)
    except ConfigError as exc:
        hint = "" if "method" in spec else " (a run's method defaults to its name; set 'method:' for another)"
        raise ConfigError(f"{here}: {exc}{hint}") from None
    params = dict(_mapping(spec.get("params") or {}, here, "params"))
    try:
        resolved = method_cls.resolve_params(params)
    except ConfigError as exc:
        raise ConfigError(f"{here}: {exc}") from None
    given = {k.replace("-", "_") for k in params}
    config = _numbers({k: v for k, v in spec.items() if k in RUN_CONFIG_KEYS}, here)
    return RunSpec(name=name, method=method, params={k: v for k, v in resolved.items() if k in given}, config=config)


def config_differences(requested: TrainConfig, saved: dict) -> list[str]:
    """The settings in which a requested configuration differs from a run's saved (resolved) ``config.yaml``.

    For the named data sets the request is resolved first, so every key is compared; for an image
    folder (whose facts need its data) only the keys the request sets away from the defaults.
    """
    from ..data import DATASETS
    from ..methods import get_method

    info = DATASETS.get(requested.dataset)
    if info is not None:
        values, skip_defaults = resolve(requested, info, get_method(requested.method)).to_dict(), False
    else:
        values, skip_defaults = requested.to_dict(), True
    defaults = dataclasses.asdict(TrainConfig())
    out = []
    for key, value in values.items():
        if key in RESUME_FREE or (skip_defaults and value == defaults[key]):
            continue
        old = saved.get(key, defaults[key])   # a key newer than the run: the run had its default
        if key == "method_params" and isinstance(old, dict) and saved.get("method") == requested.method:
            old = get_method(requested.method).saved_params(old)   # likewise a method parameter newer than the run
        if skip_defaults and isinstance(value, dict):
            old = old or {}
            out += [f"{key}.{k} was {old.get(k)!r}, now {v!r}" for k, v in value.items() if not same_value(old.get(k), v)]
        elif not same_setting(key, old, value):
            out.append(f"{key} was {old!r}, now {value!r}")
    return out
