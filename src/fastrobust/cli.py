"""The ``fastrobust`` command line (also ``python -m fastrobust``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from typing import Any

import yaml

from . import __version__
from .config import TrainConfig, load_yaml, parse_number
from .errors import ConfigError, FastrobustError

DESCRIPTION = """\
fastrobust: cheap adversarial training of robust image classifiers.

Commands:
  demo      train PGD-AT, GAAT and DEAT-p models on the MNIST subset shipped with the
            package and print a table of cost and robustness (no download, about 2 minutes)
  train     train one model with one method (see `fastrobust train --help`)
  methods   list the training methods and their parameters
  models    list the model architectures and their options
  datasets  list the data sets and where their files are looked for
  plot      draw a run's per-epoch curves (accuracy, r/K schedule, gradient magnitude) to a PNG
  eval      robust accuracy of a run or checkpoint: PGD, CW, AutoAttack, Square, masking checks
  bench     train and evaluate a suite of methods side by side: table, CSV, cost/robustness plots
  report    the benchmark table and plots from existing run directories
  export    a run's model as model.safetensors + config.json, loadable with plain torch

Cost is counted in passes per example (one forward+backward of one example = 1;
forward-only work 1/3, backward-only 2/3) and in training-loop seconds.
"""

TRAIN_EPILOG = """\
examples:
  fastrobust train --method pgd --dataset mnist --data-dir ~/data/mnist --epochs 10 --out runs/pgd
  fastrobust train --method fgsm-rs --dataset cifar10 --eps 8/255 --lr-schedule cyclic --lr 0.2 --epochs 15
  fastrobust train --method free --replays 8 --dataset cifar10 --model preact-resnet18 --model-opt width=32
  fastrobust train --resume --out runs/pgd          # continue a killed run

Data sets are looked for in --data-dir, else $FASTROBUST_DATA, else ~/.cache/fastrobust,
and downloaded (checksum-verified) when missing and a network exists. `mnist-subset` ships
with the package. Outputs in --out: config.yaml, metrics.jsonl, train.log, last.pt, best.pt
(highest validation PGD-CW accuracy; natural: clean accuracy) and summary.json (test accuracy of best.pt).
"""


def _number(what: str):
    def convert(text: str) -> float:
        try:
            return parse_number(text, what)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _milestones(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"lr milestones: expected comma-separated epochs like 25,40, got {text!r}") from None


def _normalize(text: str):
    text = text.strip()
    if text in ("dataset", "none"):
        return text
    try:
        mean, std = text.split("/")
        return [[float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--normalize: expected dataset, none or MEAN/STD with one value per channel "
                                         f"(e.g. 0.49,0.48,0.45/0.25,0.24,0.26), got {text!r}") from None


def _model_opt(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model-opt: expected KEY=VALUE (e.g. width=16), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        why = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise argparse.ArgumentTypeError(
            f"--model-opt {text!r}: the value is not valid YAML ({why}); write a number, a name or a list, "
            f"e.g. width=16 or 'widths=[16, 32]'") from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


#: the converters that configuration keys name (``opt(..., parse=NAME)`` in :mod:`fastrobust.config`)
_PARSERS = {"number": _number, "milestones": lambda key: _milestones, "normalize": lambda key: _normalize,
            "model_opt": lambda key: _model_opt, "names": lambda key: _names}


def train_options() -> list[tuple[str, str, dict]]:
    """(flag, config key, argparse kwargs) of every configuration key that has a flag, generated from
    :class:`~fastrobust.config.TrainConfig`'s table; defaults are suppressed so we know what was given."""
    options = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if meta["flag"] is None:
            continue
        kwargs = dict(meta["cli"])
        if "parse" in kwargs:
            kwargs["type"] = _PARSERS[kwargs.pop("parse")](f.name.replace("_", " "))
        options.append((meta["flag"] or "--" + f.name.replace("_", "-"), f.name, dict(kwargs, help=meta["help"])))
    return options


TRAIN_OPTIONS = train_options()


def method_in_argv(argv: list[str]) -> str:
    """The training method a ``train`` command line asks for: ``--method``, else its ``--config`` file's, else pgd."""
    def value_of(flag: str) -> str | None:   # the last one given wins, as in argparse
        value = None
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
        return value

    method = value_of("--method")
    if method is None and value_of("--config"):
        try:
            method = load_yaml(value_of("--config")).get("method")
        except ConfigError:
            method = None   # reported when the configuration is read
    return str(method or TrainConfig().method)


def _add_method_params(parser: argparse.ArgumentParser, method: str) -> None:
    """``--name`` flags for the parameters of ``method`` only, with its own help texts and defaults."""
    from .methods import get_method

    try:
        cls = get_method(method)
    except ConfigError:
        return    # an unknown --method is reported with the list of methods when the command runs
    group = parser.add_argument_group(
        f"parameters of method {cls.name} (another method's: fastrobust train --method NAME --help)",
        textwrap.fill(cls.description, 100))
    for p in cls.params:
        choices = f"; one of {', '.join(map(str, p.choices))}" if p.choices else ""
        default = str(p.default).lower() if p.type is bool else p.default
        shown = f" (default {default}{choices})" if default != "" else (f" ({choices[2:]})" if choices else "")
        group.add_argument(p.flag, dest=f"mp__{p.name}", metavar=p.type.__name__.upper(), default=argparse.SUPPRESS,
                           nargs="?" if p.type is bool else None, const="true" if p.type is bool else None,
                           help=f"{p.help}{shown}".replace("%", "%%"))


def _refuse_other_methods_flags(unknown: list[str], method: str) -> None:
    """A flag left over that is a parameter of another method: say whose it is and what ``method`` takes."""
    from .methods import get_method, list_methods

    for arg in unknown:
        flag = arg.split("=", 1)[0]
        owners = [cls.name for cls in list_methods() if any(p.flag == flag for p in cls.params)]
        if owners:
            own = ", ".join(p.flag for p in get_method(method).params) or "none"
            raise ConfigError(f"{flag} is not a parameter of method {method} (it is one of {', '.join(owners)}); "
                              f"{method}'s parameters: {own}")


class _Parser(argparse.ArgumentParser):
    """One line for a bad flag (the usage of `train` is long): the problem and where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


TRUST_HELP = ("import and call the model/data factory (package.module:callable) that the folder names: this "
              "runs its code, so give it only for a folder you trust (runs you trained in that folder yourself, "
              "and references on your allow-list FASTROBUST_TRUSTED_CODE, need no flag)")


def build_parser(method: str = "pgd") -> argparse.ArgumentParser:
    """The command-line parser; ``train``'s method parameters are those of ``method``."""
    parser = _Parser(prog="fastrobust", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tr = sub.add_parser("train", help="train one model with one method", epilog=TRAIN_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Adversarially train one model. Flags override --config, which overrides the defaults.")
    tr.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS, help="YAML file of configuration keys (as in a run's config.yaml)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    tr.add_argument("--trust-code", action="store_true", help="with --resume: " + TRUST_HELP)
    groups: dict[str, Any] = {}
    for flag, key, kwargs in TRAIN_OPTIONS:   # grouped in --help as in TrainConfig's table
        group = TrainConfig.__dataclass_fields__[key].metadata["group"]
        if group not in groups:
            groups[group] = tr.add_argument_group(group)
        groups[group].add_argument(flag, dest=f"cfg__{key}", default=argparse.SUPPRESS, **kwargs)
    _add_method_params(tr, method)

    demo = sub.add_parser("demo", help="the main job on the shipped MNIST subset: train, evaluate, print a table",
                          description="Trains PGD-AT, GAAT and DEAT-p models on the MNIST subset that ships inside the package "
                                      "(6,000 train / 1,000 test images, no download), evaluates each and prints cost and robustness.")
    demo.add_argument("--out", default="fastrobust-demo", metavar="DIR", help="folder for the runs (default ./fastrobust-demo)")
    demo.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs per method (default: the demo recipe's)")
    demo.add_argument("--methods", default=None, metavar="A,B", help="comma-separated methods (default pgd,gaat,deat-p)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    pl = sub.add_parser("plot", help="draw a run's per-epoch curves to a PNG",
                        description="Draws validation clean/robust accuracy per epoch and, for the dynamic methods, "
                                    "the r/K schedule and the gradient magnitude MG with its threshold.")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `fastrobust train`")
    pl.add_argument("--out", default=None, metavar="FILE.png", help="output file (default RUN_DIR/curves.png)")

    from .bench.commands import add_parsers as add_bench_parsers

    add_bench_parsers(sub)
    _add_eval_parser(sub)
    ex = sub.add_parser("export", help="a run's model as model.safetensors + config.json, loadable with plain torch",
                        description="Write the run's best model as model.safetensors (the network's weights) and "
                                    "config.json (model spec, input size and normalisation, eps, threat model, clean/"
                                    "robust/AutoAttack accuracy from eval.json or summary.json, a RobustBench-like "
                                    "model_info), and print how to load it. Needs pip install \"fastrobust[export]\".")
    ex.add_argument("run", metavar="RUN_DIR_or_CHECKPOINT", help="a run directory (its best.pt) or a fastrobust .pt")
    ex.add_argument("--format", default="safetensors", choices=["safetensors"], help="output format (default safetensors)")
    ex.add_argument("--out", default=None, metavar="DIR", help="output folder (default RUN_DIR/export)")
    ex.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    me = sub.add_parser("methods", help="list the training methods and their parameters")
    me.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default all)")
    sub.add_parser("models", help="list the model architectures and their options")
    sub.add_parser("datasets", help="list the data sets")
    return parser


EVAL_EPILOG = """\
attacks (comma-separated, run cheapest first whatever the order given):
  clean            no attack
  fgsm             one step of size eps (CE loss)
  pgd20, pgd100    PGD-K on cross-entropy, random start (any pgdK; pgdKxR: R restarts, e.g. pgd50x10)
  cw20             PGD-K on the Carlini-Wagner margin loss (any cwK or cwKxR)
  aa               AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square 5000 queries; pyautoattack)
  apgd-ce, apgd-t, fab-t, apgd-dlr   one AutoAttack component
  square           the black-box Square attack, 5000 queries (squareQ: Q queries)

Each attack runs only on the examples no earlier attack fooled; robust accuracy is the
per-example worst case over all of them. Gradient-masking checks (robust > clean, more
steps raising accuracy, Square beating the white-box attacks, eps = 0, zero gradients,
non-determinism) are printed as warnings and stored with the results in eval.json.
PGD steps follow the data set recipe (2/255 CIFAR/SVHN, 0.01 MNIST; 2.5 eps/K for few steps).
AutoAttack on the CPU is slow: try it on --test-subset 200 first.

examples:
  fastrobust eval runs/pgd                                   # clean + PGD-20, writes runs/pgd/eval.json
  fastrobust eval runs/pgd --attacks clean,pgd20,cw20,aa --test-subset 500
  fastrobust eval runs/pgd/last.pt --attacks pgd50x10 --eps 0.2 --out last-eval.json
"""


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="robust accuracy of a run or checkpoint (PGD, CW, AutoAttack, Square)",
                        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Evaluate a trained model on the test split of its data set under a list of "
                                    "attacks and write the results (per attack, worst case, flags, settings, "
                                    "versions) as JSON.")
    ev.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT",
                    help="a run directory of `fastrobust train` (its best.pt is evaluated) or a fastrobust .pt checkpoint")
    ev.add_argument("--attacks", default="clean,pgd20", metavar="A,B,...",
                    help="comma-separated attacks (default clean,pgd20; see below)")
    ev.add_argument("--eps", type=_number("eps"), default=None, metavar="E",
                    help="radius in [0,1] pixel units, e.g. 8/255 or 0.3 (default: the run's eps)")
    ev.add_argument("--norm", choices=["linf", "l2"], default=None, help="threat model (default: the run's, linf for "
                    "runs before --norm existed); a norm other than the run's needs --eps")
    ev.add_argument("--test-subset", type=int, default=None, metavar="N",
                    help="evaluate on N test images, the same N as `train --test-subset N` (default: the run's test split)")
    ev.add_argument("--batch-size", type=int, default=500, metavar="N", help="examples per attacked batch (default 500)")
    ev.add_argument("--out", default=None, metavar="FILE.json",
                    help="output file (default RUN_DIR/eval.json, or NAME.eval.json next to a checkpoint NAME.pt)")
    ev.add_argument("--dataset", default=None, metavar="NAME",
                    help="evaluate on this data set's test split (a name or package.module:factory; default: the "
                         "run's; needed for a run of fastrobust.fit, whose data is not stored)")
    ev.add_argument("--data-dir", default=None, metavar="DIR", help="where the data set is (default: the run's)")
    ev.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto (cuda if available)")
    ev.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random starts and AutoAttack (default 0)")
    ev.add_argument("--no-cascade", action="store_true",
                    help="run every attack on every example (each accuracy is then its own on all of them; slower)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> None:
    import warnings

    from .evaluation import BrokenModelWarning, GradientMaskingWarning, evaluate_checkpoint, format_report, output_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)   # printed below with the table
        warnings.simplefilter("ignore", BrokenModelWarning)
        result = evaluate_checkpoint(args.path, attacks=args.attacks, eps=args.eps, norm=args.norm,
                                     test_subset=args.test_subset, batch_size=args.batch_size,
                                     device=None if args.device == "auto" else args.device, data_dir=args.data_dir,
                                     out=args.out, progress=False if args.no_progress else None, seed=args.seed,
                                     cascade=not args.no_cascade, dataset=args.dataset, trust_code=args.trust_code)
    print(format_report(result))
    print(f"wrote {output_path(args.path, args.out)}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig()
    given = vars(args)
    if "config" in given:
        cfg.update(load_yaml(given["config"]), given["config"])
    flags = {k[5:]: v for k, v in given.items() if k.startswith("cfg__")}
    if "model_options" in flags:
        flags["model_options"] = {**cfg.model_options, **dict(flags["model_options"])}
    cfg.update(flags, "command line")
    method_params = {k[4:]: v for k, v in given.items() if k.startswith("mp__")}
    if method_params:
        cfg.method_params = {**cfg.method_params, **method_params}
    return cfg


def given_keys(args: argparse.Namespace) -> set[str]:
    """The configuration keys given explicitly (flags and --config file), which --resume compares
    with the run's saved configuration even where they equal the defaults."""
    given = vars(args)
    keys = {k[5:] for k in given if k.startswith("cfg__")}
    if "config" in given:
        keys |= {str(k).replace("-", "_") for k in load_yaml(given["config"])}
    if any(k.startswith("mp__") for k in given):
        keys.add("method_params")
    return keys


def cmd_methods(names: list[str] | None = None) -> None:
    from .methods import get_method, list_methods

    for cls in [get_method(n) for n in names] if names else list_methods():
        print(f"{cls.name}")
        print(textwrap.fill(cls.description, 88, initial_indent="    ", subsequent_indent="    "))
        for p in cls.params:
            choices = f", one of {', '.join(map(str, p.choices))}" if p.choices else ""
            print(f"    {p.flag} ({p.type.__name__}, default {p.default}{choices}): {p.help}")
        print()


def cmd_models() -> None:
    from .models import FACTORY_HELP, list_models

    for entry in list_models():
        opts = ", ".join(f"{k}={v}" for k, v in entry.options.items()) or "none"
        print(f"{entry.name:18s} {entry.description}\n{'':18s} options: {opts}")
    print()
    print(FACTORY_HELP)


def cmd_datasets() -> None:
    from .data import DATASETS, default_data_dir
    from .data.user import FACTORY_HELP as DATA_FACTORY_HELP

    print(f"default data dir: {default_data_dir()} (override with --data-dir or $FASTROBUST_DATA)")
    for name, info in sorted(DATASETS.items()):
        print(f"{name:14s} {info.num_classes:4d} classes, {info.channels}x{info.image_size[0]}x{info.image_size[1]}, default eps {info.eps:.4g}")
    print(f"{'imagefolder':14s} your own images: DIR/train/<class>/*.png|jpg and DIR/test/<class>/..., pass --data-dir DIR")
    print()
    print(DATA_FACTORY_HELP)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        method = method_in_argv(argv)
        parser = build_parser(method)
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            if args.command == "train":
                _refuse_other_methods_flags(unknown, method)
            parser.parse_args(argv)   # argparse's own message and exit code 2
        if args.command == "train":
            from .engine import train

            train(config_from_args(args), resume=args.resume, progress=False if args.no_progress else None,
                  given=given_keys(args), trust_code=args.trust_code)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(out=args.out, epochs=args.epochs, methods=args.methods, progress=False if args.no_progress else None)
        elif args.command == "plot":
            from .reports import plot_run

            print(f"wrote {plot_run(args.run_dir, args.out)}")
        elif args.command in ("bench", "report"):
            from .bench.commands import run_command

            run_command(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "export":
            import json as _json

            from .export import export_run, load_instructions

            folder = export_run(args.run, args.format, args.out, trust_code=args.trust_code)
            exported = _json.loads((folder / "config.json").read_text())
            print(f"wrote {folder / 'model.safetensors'} and {folder / 'config.json'}")
            if exported["accuracy"].get("note"):
                print(f"note: {exported['accuracy']['note']}")
            print(load_instructions(folder, exported))
        elif args.command == "methods":
            cmd_methods(args.names)
        elif args.command == "models":
            cmd_models()
        elif args.command == "datasets":
            cmd_datasets()
        else:
            parser.print_help()
            return 0
    except FastrobustError as exc:
        if not getattr(exc, "quiet", False):   # quiet: another process of a torchrun job showed the error
            print(f"fastrobust: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastrobust: interrupted (a run can be continued with `fastrobust train --resume --out DIR`)", file=sys.stderr)
        return 130
    return 0
