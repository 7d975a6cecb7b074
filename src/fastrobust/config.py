"""The training configuration: one dataclass, its defaults and its validation.

Resolution order (later wins): built-in defaults, per-dataset defaults,
``--config FILE.yaml``, command-line flags. :func:`resolve` fills every
``None`` from the dataset and method, and :func:`validate` refuses bad
values before any work starts, with a message that says what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

LR_SCHEDULES = ("multistep", "piecewise", "cyclic", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam")
AMP_MODES = ("auto", "none", "bf16", "fp16")   # auto: resolved at run start (engine/hardware.py)
DEVICES = ("auto", "cpu", "cuda")
NORMS = ("linf", "l2")


def parse_number(value: Any, what: str = "value") -> float:
    """Parse ``8/255``, ``0.3`` or ``3e-2`` (or a number) into a float."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    m = re.fullmatch(r"([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)", text)
    try:
        if m:
            num, den = float(m.group(1)), float(m.group(2))
            if den == 0:
                raise ZeroDivisionError
            return num / den
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{what}: cannot read {value!r} as a number (write e.g. 8/255 or 0.3)") from None


def opt(default: Any, help: str, *, group: str, resume: bool = False, fit: bool = True, flag: str | None = "",
        **cli: Any):
    """A configuration key: its default and, for the table that the command line, ``fit``, the resume and
    bench comparisons and the docs are generated from, its ``help``, ``group``, whether ``--resume`` may
    change it (``resume``: it does not change the result), whether ``fit`` takes it by name, its flag
    (``""``: ``--the-key``; None: none) and argparse's keyword arguments (``parse``: a converter's name in
    :mod:`fastrobust.cli`)."""
    meta = dict(help=help, group=group, resume=resume, fit=fit, flag=flag, cli=cli)
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml``. One field per key, each with its
    default, help, group and rules (see :func:`opt`): adding a key is one edit here."""

    # -- what is trained, on what ---------------------------------------------------------------------
    method: str = opt("pgd", "training method (default pgd; see `fastrobust methods`)", group="method", metavar="NAME")
    dataset: str = opt("mnist-subset", "mnist-subset (default, ships with the package), mnist, fashion-mnist, cifar10, "
                       "cifar100, svhn, imagefolder, or your own as package.module:factory (see `fastrobust datasets`)",
                       group="data", fit=False, metavar="NAME")
    data_dir: str | None = opt(None, "folder holding the data set files (default $FASTROBUST_DATA or "
                               "~/.cache/fastrobust); for imagefolder, the folder with train/ and test/",
                               group="data", resume=True, fit=False, metavar="DIR")
    model: str | None = opt(None, "architecture (default mnist-cnn for 28x28 gray data, preact-resnet18 otherwise; see "
                            "`fastrobust models`), or your own as package.module:factory", group="model", metavar="NAME")
    model_options: dict = opt({}, "a model option, repeatable, e.g. --model-opt width=16", group="model",
                              flag="--model-opt", parse="model_opt", metavar="KEY=VALUE", action="append")
    normalize: str | list | None = opt(
        None, "input normalisation inside the model: 'dataset' (the data set's mean/std; the default for built-in "
        "models), 'none' (the default for --model package.module:factory), or per-channel values like "
        "0.49,0.48,0.45/0.25,0.24,0.26", group="model", parse="normalize", metavar="MEAN/STD")
    # -- optimisation ---------------------------------------------------------------------------------
    epochs: int = opt(10, "number of epochs (default 10)", group="optimisation", type=int, metavar="N")
    batch_size: int | None = opt(None, "global minibatch size (default 100 for MNIST-like data, 128 otherwise)",
                                 group="optimisation", type=int, metavar="N")
    optimizer: str | None = opt(None, "default adam for MNIST-like data, sgd (momentum 0.9) otherwise",
                                group="optimisation", choices=list(OPTIMIZERS))
    lr: float | None = opt(None, "peak learning rate (default 1e-3 for adam, 0.05 for sgd)", group="optimisation",
                           parse="number", metavar="LR")
    momentum: float = opt(0.9, "SGD momentum (default 0.9)", group="optimisation", type=float, metavar="M")
    weight_decay: float | None = opt(None, "default 5e-4 for sgd, 0 for adam", group="optimisation", type=float,
                                     metavar="WD")
    lr_schedule: str = opt("multistep", "multistep (= piecewise; x lr-gamma at each milestone, default), cyclic "
                           "(triangle peaking at lr-peak of training), cosine, constant; updated every minibatch",
                           group="optimisation", choices=list(LR_SCHEDULES))
    lr_milestones: list | None = opt(None, "multistep milestones in epochs (default 50%% and 80%% of training)",
                                     group="optimisation", parse="milestones", metavar="E1,E2")
    lr_gamma: float = opt(0.1, "multistep decay factor (default 0.1)", group="optimisation", type=float, metavar="G")
    lr_peak: float = opt(0.4, "cyclic: where the LR peaks, as a fraction of training (default 0.4, Wong et al.; "
                         "DEAT's FAST setting 0.5)", group="optimisation", type=float, metavar="F")
    grad_clip: float | None = opt(None, "clip the weight gradient norm", group="optimisation", type=float,
                                  metavar="NORM")
    label_smoothing: float = opt(0.0, "label smoothing of the training loss's cross-entropy terms (the attacks use "
                                 "the hard labels), e.g. 0.4 as in the FastAT Benchmark; default 0",
                                 group="optimisation", type=float, metavar="S")
    wa: float | None = opt(None, "weight averaging: keep an exponential moving average of the weights (and "
                           "BatchNorm statistics) with this decay after every optimizer step, e.g. 0.9995; validated "
                           "each epoch next to the raw model, best.pt keeps the more robust of the two (summary.json: "
                           "best_weights)", group="optimisation", type=float, metavar="TAU")
    wa_warmup: float = opt(10.0, "weight averaging's warm-up: the decay after n steps is min(TAU, (1 + n) / "
                           "(W + n)), so the average follows the model early on (0: TAU from the first step; "
                           "default 10)", group="optimisation", type=float, metavar="W")
    # -- the threat model and the attack ---------------------------------------------------------------
    norm: str = opt("linf", "threat model of training and evaluation (default linf)", group="threat model",
                    choices=list(NORMS))
    eps: float | None = opt(None, "radius in [0,1] pixel units, e.g. 8/255 or 0.3 (default L-inf: MNIST 0.3, "
                            "CIFAR/SVHN 8/255; L2: MNIST 2.0, others 0.5)", group="threat model", parse="number",
                            metavar="E")
    alpha: float | None = opt(None, "attack step (default per method: pgd the recipe step, 2/255 on CIFAR, 0.01 on "
                              "MNIST; fgsm-rs 1.25 eps; free eps)", group="threat model", parse="number", metavar="A")
    eps_warmup: float | None = opt(None, "ramp eps (and alpha) linearly from 0 over this many epochs (default: a "
                                   "fifth of the epochs; 0 = full eps from the first step)", group="threat model",
                                   type=float, metavar="EPOCHS")
    method_params: dict = opt({}, "the method's own parameters (flags of `fastrobust train --method M --help`)",
                              group="method", fit=False, flag=None)
    guard: bool = opt(False, "catastrophic-overfitting guard: when validation robust accuracy collapses (a fall "
                      "from robustness it had reached while FGSM accuracy stays high), restore the best epoch's "
                      "weights, optimizer and method state and train on with a stronger attack (twice the steps or "
                      "replays at half the step; again while FGSM stays 15+ points above PGD after an epoch to "
                      "adapt, at most twice); each event in metrics.jsonl and train.log. Without it a collapse is "
                      "only marked (summary.json: collapsed, collapsed_epoch)", group="method", action="store_true")
    guard_passes: float | None = opt(None, "with --guard, limit its strengthenings by cost instead of by count: it "
                                     "strengthens (doubling the attack) while twice the last epoch's passes per "
                                     "example stay within this many (e.g. 20, about half of PGD-40 AT's 41); "
                                     "default: at most 2 strengthenings", group="method", type=float, metavar="P")
    # -- data splits and evaluation ---------------------------------------------------------------------
    val_size: int = opt(1000, "held-out validation examples from the training set, for checkpoint selection "
                        "(default 1000; 0 = none, best = last)", group="evaluation", type=int, metavar="N")
    train_subset: int | None = opt(None, "train on a seeded random subset of N examples", group="data", type=int,
                                   metavar="N")
    test_subset: int | None = opt(None, "evaluate on a seeded random subset of N test examples", group="evaluation",
                                  type=int, metavar="N")
    val_steps: int = opt(10, "PGD steps (CW loss) of the per-epoch validation attack (default 10)",
                         group="evaluation", type=int, metavar="K")
    test_steps: int = opt(20, "PGD steps (CE loss) of the final test attack (default 20)", group="evaluation",
                          type=int, metavar="K")
    eval_batch_size: int = opt(500, "batch size of evaluation (default 500)", group="evaluation", type=int,
                               metavar="N")
    seed: int = opt(0, "random seed (default 0)", group="run", type=int, metavar="S")
    # -- the run and the hardware ---------------------------------------------------------------------
    out: str | None = opt(None, "run directory (default runs/METHOD-DATASET-TIME)", group="run", resume=True,
                          metavar="DIR")
    log: list = opt([], "also log each epoch's metrics to: tensorboard (into RUN/tensorboard; needs pip install "
                    "\"fastrobust[tensorboard]\")", group="run", resume=True, parse="names", metavar="LOGGER")
    device: str = opt("auto", "default auto (cuda if available)", group="hardware", resume=True,
                      choices=list(DEVICES))
    amp: str = opt("auto", "mixed precision: auto (the default: bf16 autocast on a CUDA GPU, none on the CPU), "
                   "none (fp32), bf16, or fp16 (CUDA, with loss scaling); config.yaml records the mode used",
                   group="hardware", choices=list(AMP_MODES))
    channels_last: bool | None = opt(None, "channels_last memory format (--no-channels-last: off); default: on on "
                                     "a CUDA GPU unless --amp none, off on the CPU", group="hardware",
                                     action=argparse.BooleanOptionalAction)
    compile: bool = opt(False, "torch.compile the model", group="hardware", action="store_true")
    sync_bn: bool = opt(False, "under torchrun on GPUs: SyncBatchNorm, BatchNorm statistics of the whole global "
                        "minibatch (default: each process normalises with its shard's statistics; running "
                        "statistics are averaged over the processes after every step)", group="hardware",
                        action="store_true")
    dist_timeout: float = opt(1800.0, "under torchrun: how long a process waits for the others before the job stops "
                              "with an error (default 1800)", group="hardware", resume=True, type=float,
                              metavar="SECONDS")
    stream: bool = opt(False, "read the training data when needed through a DataLoader with worker processes (an "
                       "image folder is not decoded up front); default: the data is held in memory on the device",
                       group="data", action="store_true")
    workers: int | None = opt(None, "with --stream: DataLoader worker processes (default half the CPU cores, 1 to "
                              "8; 0 = read in the training process)", group="data", resume=True, type=int,
                              metavar="N")

    # ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def update(self, values: dict, source: str) -> "TrainConfig":
        """Set the given keys; an unknown key is refused with the allowed ones."""
        allowed = set(self.keys())
        for key, value in values.items():
            norm = key.replace("-", "_") if isinstance(key, str) else key
            if norm not in allowed:
                raise ConfigError(
                    f"{source}: unknown configuration key {key!r}. Allowed keys: {', '.join(sorted(allowed))}"
                )
            setattr(self, norm, check_type(norm, value, source))
        return self


#: the keys that ``--resume`` (and a bench rerun) may change: they do not change the result
RESUME_FREE = frozenset(f.name for f in fields(TrainConfig) if f.metadata["resume"])


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats 0.1 and 0.1000000001, 1 and 1.0, and a tuple and a list as the same setting."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


#: the hardware keys' values that a run resolves from its device (engine/hardware.py: setup_hardware)
UNRESOLVED = {"amp": "auto", "channels_last": None}


def same_setting(key: str, a: Any, b: Any) -> bool:
    """Whether two values of configuration key ``key`` are the same setting, up to spelling
    (``piecewise`` = ``multistep``, ``8/255`` = 0.0313..., a tuple = a list). ``amp: auto`` and an unset
    ``channels_last`` are the device's choice (resolved at run start): any saved value matches them."""
    if key in UNRESOLVED and UNRESOLVED[key] in (a, b):
        return True

    def norm(v):
        if key == "lr_schedule" and v == "piecewise":
            return "multistep"
        if isinstance(v, str) and key in ("eps", "alpha", "lr"):
            try:
                return parse_number(v, key)
            except ConfigError:
                return v
        return v
    return same_value(norm(a), norm(b))


def differences(values: dict, saved: dict, keys=None) -> list[str]:
    """``"KEY was OLD, now NEW"`` for each result-changing key (of ``keys``, default all of ``values``) whose
    value differs from a saved configuration's; a key newer than the saved file had its default there."""
    return [f"{key} was {saved.get(key, _DEFAULTS[key])!r}, now {values[key]!r}"
            for key in (values if keys is None else keys)
            if key not in RESUME_FREE and not same_setting(key, saved.get(key, _DEFAULTS[key]), values[key])]


_KIND_WORDS = {"int": "an integer", "float": "a number (e.g. 0.3 or 8/255)", "bool": "true or false",
               "str": "a name", "dict": "a mapping of names to values", "list": "a list", "None": "null (unset)"}


def _kind_ok(value: Any, kind: str) -> bool:
    return {"None": value is None, "int": _is_int(value), "bool": isinstance(value, bool), "str": isinstance(value, str),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "dict": isinstance(value, dict) and all(isinstance(k, str) for k in value),
            "list": isinstance(value, (list, tuple))}.get(kind, True)


def check_type(key: str, value: Any, source: str = "configuration") -> Any:
    """``value`` if it has the type of configuration key ``key`` (a number may be written as text,
    ``8/255`` or ``1e-3``: it is converted), else a ConfigError naming the key, the value and the fix."""
    kinds = [k.strip() for k in str(_FIELD_TYPES[key]).split("|")]
    if any(_kind_ok(value, k) for k in kinds):
        return value
    if "float" in kinds and isinstance(value, str):
        return parse_number(value, f"{source}: {key}")
    default = _DEFAULTS.get(key)
    example = f"; e.g. {key}: {yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}" \
        if default not in (None, {}, []) else ""
    if kinds[0] == "dict":
        example = ("; its keys must be names" if isinstance(value, dict) else "") + \
            {"model_options": "; e.g. model_options: {width: 16}", "method_params": "; e.g. method_params: {steps: 10}"}.get(key, "")
    raise ConfigError(f"{source}: {key} must be {' or '.join(_KIND_WORDS.get(k, k) for k in kinds)}, "
                      f"got {value!r} ({type(value).__name__}){example}")


def check_types(cfg: "TrainConfig", source: str = "configuration") -> None:
    """Refuse (or convert, for numbers written as text) every value of the wrong type, in place."""
    for key in cfg.keys():
        setattr(cfg, key, check_type(key, getattr(cfg, key), source))


_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
_DEFAULTS = TrainConfig().to_dict()


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (UTF-8) file: give a YAML file of configuration keys, "
                          f"such as a run's config.yaml") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML ({first}): fix or replace it") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}")
    return values


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    from .engine.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def recipe_step(eps: float, steps: int, recipe_ratio: float) -> float:
    """The attack step for ``steps`` steps at radius ``eps``.

    ``recipe_ratio`` is the published recipe's alpha/eps for the data set
    (CIFAR 2/255 at 8/255: 0.25; MNIST 0.01 at 0.3: 1/30). The recipe's
    step is used when ``steps`` such steps can cross the ball; otherwise
    2.5 * eps / steps (at most eps), so that the attack can reach the far side.
    """
    if steps * recipe_ratio >= 1.0:
        return recipe_ratio * eps
    return min(eps, 2.5 * eps / steps)


L2_EPS_SMALL, L2_EPS = 2.0, 0.5   # default L2 radii: 28x28 gray data (MNIST), other data (CIFAR)


def recipe_ratio(norm: str, info) -> float:
    """The data set recipe's alpha/eps for :func:`recipe_step`; L2 has no recipe, so 2.5 eps / K (Madry)."""
    return info.alpha / info.eps if norm == "linf" else 0.0


#: the default eps ramp, as a share of the epochs. Measured with PGD AT and the data sets' defaults (test clean /
#: PGD-20 %, OMP_NUM_THREADS=1). MNIST (mnist-cnn, Adam 1e-3, PGD-10, 3,000 training images, 2,000 test, seeds 0/1):
#: at full eps from the first step, L-inf 0.3 stayed at chance for 1, 2, 3, 5 and 10 epochs (10.4/10.4 at 10) and
#: L2 2.0 for 1 and 2 epochs (10.4/10.4; seed 1: 58.4/34.4); a ramp over a fifth of the epochs learnt every time
#: (L-inf 64.2/18.9 at 2 epochs, 70.5/26.9 at 3, 77.2/29.0 at 5, 89.5/37.7 at 10; L2 85.9/48.6 at 2, 86.9/53.0 at
#: 3, 95.0/63.4 at 10; 1 epoch: L2 65.9/42.8, L-inf 27.5/0.0, where no ramp gives robustness: 68.8/2.4 over the
#: whole epoch). Against ramps over 0.3 of the epochs or the whole first epoch, its PGD accuracy was within
#: a point or higher (L-inf, 2 epochs: 18.9 against 19.7 and 9.5), its clean accuracy up to 12 points lower.
#: CIFAR-10 (JPEG copy; PreActResNet-18 width 16, PGD-7, SGD 0.02, batch 32, 2,000 images, 3 epochs, 500 test):
#: L-inf 8/255 at full eps 12.2/10.6 (chance), ramped 19.4/16.8; L2 0.5 at full eps 20.0/17.0, ramped 26.0/18.8.
EPS_WARMUP_SHARE = 0.2


def default_eps_warmup(epochs) -> float:
    """The default eps warm-up of a run of ``epochs`` epochs: :data:`EPS_WARMUP_SHARE` of them."""
    return round(EPS_WARMUP_SHARE * epochs, 4) if _is_int(epochs) and epochs > 0 else 0.0


def _is_small(info) -> bool:
    return info.image_size[0] <= 28 and info.channels == 1


def resolve(cfg: TrainConfig, info, method_cls) -> TrainConfig:
    """Fill dataset- and method-dependent defaults; returns a new config."""
    cfg = dataclasses.replace(cfg)
    check_types(cfg)
    cfg = dataclasses.replace(cfg, model_options=dict(cfg.model_options), method_params=dict(cfg.method_params))
    small = _is_small(info)
    if cfg.model is None:
        cfg.model = "mnist-cnn" if small else "preact-resnet18"
    if cfg.batch_size is None:
        cfg.batch_size = 100 if small else 128
    if cfg.optimizer is None:
        cfg.optimizer = "adam" if small else "sgd"
    if cfg.lr is None:
        cfg.lr = 1e-3 if cfg.optimizer == "adam" else 0.05
    if cfg.weight_decay is None:
        cfg.weight_decay = 0.0 if cfg.optimizer == "adam" else 5e-4
    if cfg.eps is None:
        cfg.eps = info.eps if cfg.norm != "l2" else (L2_EPS_SMALL if small else L2_EPS)
    else:
        cfg.eps = parse_number(cfg.eps, "eps")
    cfg.method_params = method_cls.resolve_params(cfg.method_params)
    if cfg.alpha is None:
        cfg.alpha = method_cls.default_alpha(cfg.eps, recipe_ratio(cfg.norm, info), cfg.method_params)
    else:
        cfg.alpha = parse_number(cfg.alpha, "alpha")
    if cfg.eps_warmup is None:
        cfg.eps_warmup = default_eps_warmup(cfg.epochs)
    if cfg.lr_schedule == "piecewise":
        cfg.lr_schedule = "multistep"
    if cfg.lr_milestones is None and cfg.lr_schedule == "multistep":
        cfg.lr_milestones = [round(0.5 * cfg.epochs, 4), round(0.8 * cfg.epochs, 4)]
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(cfg: TrainConfig) -> None:
    """Refuse invalid values before any work starts (call after :func:`resolve`)."""
    _check(_is_int(cfg.epochs) and cfg.epochs >= 1, f"epochs must be an integer >= 1, got {cfg.epochs!r}")
    _check(_is_int(cfg.batch_size) and cfg.batch_size >= 1, f"batch_size must be an integer >= 1, got {cfg.batch_size!r}")
    _check(cfg.wa is None or 0 < cfg.wa < 1, f"wa (weight averaging's decay) must lie between 0 and 1, e.g. "
                                             f"0.9995, got {cfg.wa!r}")
    _check(0 <= cfg.label_smoothing < 1, f"label_smoothing must lie in [0, 1), got {cfg.label_smoothing!r}")
    _check(cfg.wa_warmup >= 0, f"wa_warmup must be >= 0, got {cfg.wa_warmup!r}")
    _check(cfg.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    _check(cfg.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    _check(cfg.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    _check(cfg.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    for name in ("lr", "momentum", "weight_decay", "lr_gamma", "eps_warmup"):
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and value >= 0, f"{name} must be a number >= 0, got {value!r}")
    _check(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    _check(isinstance(cfg.lr_peak, (int, float)) and not isinstance(cfg.lr_peak, bool) and 0 < cfg.lr_peak < 1,
           f"lr_peak must be a fraction of training strictly between 0 and 1 (e.g. 0.5), got {cfg.lr_peak!r}")
    _check(cfg.eps >= 0, f"eps must be >= 0 (an L-inf radius in [0,1] pixel units, e.g. 8/255 or 0.3), got {cfg.eps}")
    _check(cfg.norm in NORMS, f"norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    _check(cfg.norm != "linf" or cfg.eps <= 1, f"eps must be <= 1 for L-inf (pixels are in [0,1]), got {cfg.eps}")
    _check(cfg.alpha >= 0, f"alpha must be >= 0, got {cfg.alpha}")
    _check(cfg.eps_warmup <= cfg.epochs, f"eps_warmup ({cfg.eps_warmup}) must not exceed epochs ({cfg.epochs})")
    if cfg.lr_milestones is not None:
        _check(
            isinstance(cfg.lr_milestones, (list, tuple)) and all(isinstance(m, (int, float)) and 0 <= m <= cfg.epochs for m in cfg.lr_milestones),
            f"lr_milestones must be a list of epochs between 0 and {cfg.epochs}, got {cfg.lr_milestones!r}",
        )
    _check(_is_int(cfg.val_size) and cfg.val_size >= 0, f"val_size must be an integer >= 0, got {cfg.val_size!r}")
    for name in ("train_subset", "test_subset"):
        value = getattr(cfg, name)
        _check(value is None or (_is_int(value) and value >= 1), f"{name} must be an integer >= 1, got {value!r}")
    for name in ("val_steps", "test_steps", "eval_batch_size"):
        value = getattr(cfg, name)
        _check(_is_int(value) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")
    _check(_is_int(cfg.seed), f"seed must be an integer, got {cfg.seed!r}")
    _check(cfg.grad_clip is None or cfg.grad_clip > 0, f"grad_clip must be > 0, got {cfg.grad_clip}")
    _check(isinstance(cfg.model_options, dict), "model_options must be a mapping of option names to values")
    _check(isinstance(cfg.sync_bn, bool), f"sync_bn must be true or false, got {cfg.sync_bn!r}")
    _check(isinstance(cfg.stream, bool), f"stream must be true or false, got {cfg.stream!r}")
    _check(isinstance(cfg.guard, bool), f"guard must be true or false, got {cfg.guard!r}")
    _check(cfg.guard_passes is None or (isinstance(cfg.guard_passes, (int, float)) and not isinstance(cfg.guard_passes, bool)
                                       and cfg.guard_passes > 0),
           f"guard_passes must be a number of passes per example > 0, got {cfg.guard_passes!r}")
    _check(cfg.guard_passes is None or cfg.guard, "--guard-passes limits the collapse guard's strengthenings: it needs "
           "--guard (add it, or drop --guard-passes)")
    _check(cfg.workers is None or (_is_int(cfg.workers) and cfg.workers >= 0),
           f"workers must be an integer >= 0 (0: read the data in the training process), got {cfg.workers!r}")
    _check(isinstance(cfg.dist_timeout, (int, float)) and not isinstance(cfg.dist_timeout, bool) and cfg.dist_timeout > 0,
           f"dist_timeout must be a number of seconds > 0, got {cfg.dist_timeout!r}")
