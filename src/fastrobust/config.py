"""The training configuration: one dataclass, its defaults and its validation.

Resolution order (later wins): built-in defaults, per-dataset defaults,
``--config FILE.yaml``, command-line flags. :func:`resolve` fills every
``None`` from the dataset and method, and :func:`validate` refuses bad
values before any work starts, with a message that says what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

LR_SCHEDULES = ("multistep", "piecewise", "cyclic", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam")
AMP_MODES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


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


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml``."""

    method: str = "pgd"
    dataset: str = "mnist-subset"
    data_dir: str | None = None
    model: str | None = None            # default: mnist-cnn for 28x28 data, preact-resnet18 otherwise
    model_options: dict = field(default_factory=dict)
    normalize: str | list | None = None  # input normalisation: None (built-in models: the data set's; a user's
                                         # package.module:factory model: none), "dataset", "none" or [mean, std]
    epochs: int = 10
    batch_size: int | None = None       # default: 100 for MNIST-like data, 128 otherwise
    optimizer: str | None = None        # default: adam for MNIST-like data, sgd otherwise
    lr: float | None = None             # peak learning rate; default 1e-3 (adam) or 0.05 (sgd)
    momentum: float = 0.9
    weight_decay: float | None = None   # default 0 (adam) or 5e-4 (sgd)
    lr_schedule: str = "multistep"
    lr_milestones: list | None = None   # epochs; default [0.5, 0.8] * epochs
    lr_gamma: float = 0.1
    lr_peak: float = 0.4                # cyclic: where the LR peaks, as a fraction of training (DEAT's FAST: 0.5)
    norm: str = "linf"                  # threat model of training and evaluation: linf or l2
    eps: float | None = None            # default from the dataset (L-inf: MNIST 0.3, CIFAR 8/255; L2: 2.0, 0.5)
    alpha: float | None = None          # default from the method and dataset
    eps_warmup: float | None = None     # epochs over which eps (and alpha) ramp up linearly from 0; default:
                                        # default_eps_warmup(epochs), a fifth of training (0 = full eps at once)
    method_params: dict = field(default_factory=dict)
    val_size: int = 1000
    train_subset: int | None = None
    test_subset: int | None = None
    val_steps: int = 10                 # PGD-k with CW loss on the validation split, for checkpoint selection
    test_steps: int = 20                # PGD-k with CE loss on the test set, for summary.json
    eval_batch_size: int = 500
    seed: int = 0
    out: str | None = None
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    sync_bn: bool = False               # SyncBatchNorm across processes (torchrun on GPUs)
    dist_timeout: float = 1800.0        # seconds a process waits for the others in a collective
    log: list = field(default_factory=list)  # loggers besides metrics.jsonl: "tensorboard" (in RUN/tensorboard)
    guard: bool = False                 # on a collapse of validation robust accuracy: restore the best state and
    #                                     strengthen the attack (engine/guard.py); off: the collapse is only marked
    stream: bool = False                # read the training data when needed (a DataLoader with workers), not held
    workers: int | None = None          # with stream: DataLoader worker processes (default: half the cores, 1..8)

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
NORMS = ("linf", "l2")


def recipe_ratio(norm: str, info) -> float:
    """The data set recipe's alpha/eps for :func:`recipe_step`; L2 has no recipe, so 2.5 eps / K (Madry)."""
    return info.alpha / info.eps if norm == "linf" else 0.0


#: the default eps ramp, as a share of the epochs. Measured with PGD-10 AT, mnist-cnn and the MNIST defaults on
#: 3,000 MNIST images (test clean / PGD-20 % on 2,000, seed 0): at full eps from the first step, 2- and 3-epoch runs
#: stayed at chance (L2 eps 2.0: 10.4/10.4 and 22.9/13.2; L-inf 0.3: 10.4/10.4 and 10.4/10.4); a ramp over a fifth
#: of the epochs learnt (L2 85.9/48.6 and 86.9/53.0; L-inf 64.2/18.9 and 70.5/26.9), as well as a ramp over the
#: whole first epoch (L2 83.2/42.9 and 87.8/51.7; L-inf 74.4/9.5 and 73.6/24.6).
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
    _check(cfg.workers is None or (_is_int(cfg.workers) and cfg.workers >= 0),
           f"workers must be an integer >= 0 (0: read the data in the training process), got {cfg.workers!r}")
    _check(isinstance(cfg.dist_timeout, (int, float)) and not isinstance(cfg.dist_timeout, bool) and cfg.dist_timeout > 0,
           f"dist_timeout must be a number of seconds > 0, got {cfg.dist_timeout!r}")
