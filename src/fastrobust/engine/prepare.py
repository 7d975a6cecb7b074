"""Before a run trains: the configuration resolved and checked, the data loaded and split, the loader."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import TrainConfig, resolve, validate
from ..data import DATASETS, Data, DeviceLoader, load_dataset, split_validation, take_subset
from ..data.core import check_classes, validation_share_note
from ..data.registry import streamed
from ..data.stream import StreamLoader, lazy
from ..errors import ConfigError
from ..factories import is_factory_ref
from ..methods import get_method
from . import callbacks as _callbacks
from .checkpoint import check_model, model_spec
from .hardware import setup_hardware
from .distributed import Dist


@dataclass
class Prepared:
    cfg: TrainConfig
    info: object
    train: object
    val: object
    test: object
    notes: list   # lines for the log: settings adjusted to the data
    warnings: list = field(default_factory=list)   # about the data (logged once, in summary.json: data_warnings)


def prepare(cfg: TrainConfig, model: torch.nn.Module | None = None, data: Data | None = None) -> Prepared:
    """Resolve and validate the configuration, then load and split the data.

    Every check that needs no data runs before the data is loaded. ``model`` and ``data``: the network
    and the data that ``fit`` hands over (``cfg.model`` and ``cfg.dataset`` name them for other processes)."""
    method_cls = get_method(cfg.method)
    if data is None and cfg.dataset not in DATASETS and cfg.dataset != "imagefolder" and not is_factory_ref(cfg.dataset):
        raise ConfigError(f"unknown dataset {cfg.dataset!r}. Available: {', '.join(sorted([*DATASETS, 'imagefolder']))}")
    known_info = DATASETS.get(cfg.dataset)
    if known_info is not None and data is None:
        _resolve_and_check(cfg, known_info, method_cls, model)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir, stream=cfg.stream)
    elif cfg.stream:
        data = streamed(data)
    resolved = _resolve_and_check(cfg, data.info, method_cls, model)
    train, val = split_validation(data.train, resolved.val_size, seed=resolved.seed) if data.val is None \
        else (data.train, data.val)   # a validation split given with the data
    share = validation_share_note(len(data.train), len(val)) if data.val is None else None
    warnings = list(data.notes) + ([share] if share else [])
    notes = _fit_subsets(resolved, train, data.test)
    train = take_subset(train, resolved.train_subset, seed=resolved.seed)
    test = take_subset(data.test, resolved.test_subset, seed=resolved.seed)
    if len(train) < 1:
        raise ConfigError("no training examples left after the validation split; lower --val-size")
    for split, what in ((train, "the training examples left after the validation split and --train-subset"),
                        (test, "the test examples (after --test-subset)")):
        check_classes(split, what, "use a larger subset")
    return Prepared(resolved, data.info, train, val, test, notes, warnings)


def _fit_subsets(resolved: TrainConfig, train, test) -> list[str]:
    """A subset larger than its split: the whole split, and config.yaml records the real number.
    Returns the lines for the log."""
    notes = []
    for key, split, what in (("train_subset", train, "training examples left after the validation split"),
                             ("test_subset", test, "test examples")):
        asked = getattr(resolved, key)
        if asked is not None and asked > len(split) >= 1:
            notes.append(f"--{key.replace('_', '-')} {asked} is more than the {len(split)} {what}: using all "
                         f"{len(split)} (config.yaml records {key}: {len(split)})")
            setattr(resolved, key, len(split))
    return notes


def _resolve_and_check(cfg, info, method_cls, model=None) -> TrainConfig:
    resolved = resolve(cfg, info, method_cls)
    validate(resolved)
    method_cls.check_config(resolved.eps, resolved.alpha, resolved.method_params)
    # build the model (without memory where possible) to refuse unknown names/options and a wrong output now
    spec = model_spec(resolved.model, info, resolved.model_options, resolved.normalize)
    method_cls.check_model(check_model(spec, model), resolved.method_params, spec["num_classes"])
    _callbacks.check_loggers(resolved.log)
    return resolved


def prepare_for(cfg: TrainConfig, dist: Dist, device: torch.device, model: torch.nn.Module | None = None,
                data: Data | None = None) -> Prepared:
    """:func:`prepare`, and the checks that only several processes need."""
    prep = prepare(cfg, model, data)
    if dist.enabled:
        c = prep.cfg
        if c.batch_size % dist.world_size:
            raise ConfigError(f"--batch-size {c.batch_size} is the global minibatch, split among {dist.world_size} "
                              f"processes: it must be divisible by {dist.world_size}")
        if len(prep.train) < dist.world_size:
            raise ConfigError(f"{len(prep.train)} training examples cannot be shared among {dist.world_size} processes")
        if c.sync_bn and device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA GPUs (SyncBatchNorm does not run on the CPU). Without it, "
                              "the processes' BatchNorm statistics are averaged after every step")
    setup_hardware(prep.cfg, device)   # amp auto / channels_last unset -> the device's defaults; cudnn, TF32
    if prep.cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"--amp fp16 needs a CUDA GPU (float16 autocast with loss scaling); this run is on the "
                          f"{device.type.upper()}: use --amp bf16 there, or --amp none (fp32)")
    return prep


def make_loader(prep: Prepared, dist: Dist, device: torch.device):
    """The training minibatches of this process: the whole split held on the device, or with --stream read
    by a DataLoader's workers (the same minibatches: see :mod:`fastrobust.data.stream`)."""
    cfg, info = prep.cfg, prep.info
    common = dict(shuffle=True, device=device, seed=cfg.seed, crop_pad=info.crop_pad, flip=info.flip,
                  rank=dist.rank, world_size=dist.world_size, with_index=True)   # (x, y, training-split rows)
    if cfg.stream:
        return StreamLoader(lazy(prep.train), cfg.batch_size, workers=cfg.workers, **common)
    return DeviceLoader(prep.train, cfg.batch_size, **common)
