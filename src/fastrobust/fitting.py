"""``fastrobust.fit``: adversarially train your own model on your own data.

The model and the data are handed to the same engine as ``fastrobust train``
(``train(cfg, model=..., data=...)``): the data converted into the in-memory splits
(:mod:`fastrobust.data.user`), the model as it is. The run folder records a
``package.module:callable`` reference for each (the model's class when another process
can import it), so ``fastrobust.load_model(run_dir)`` rebuilds the model elsewhere.
"""

from __future__ import annotations

import dataclasses
import inspect

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .errors import ConfigError, DataError, FastrobustError
from .factories import call_factory, is_factory_ref, ref_of_class

#: the reference a run of :func:`fit` records for its data: given from Python, not stored
DATA_REF = "fastrobust.fitting:data"
#: recorded for a model whose class another process cannot import (defined in __main__ or in a function)
UNIMPORTABLE_MODEL_REF = "fastrobust.fitting:unimportable_model"

def _fit_keys() -> list[str]:
    """The configuration keys ``fit`` takes by name: those of the table that ``fit`` accepts (see
    :func:`fastrobust.config.opt`) and that are not its own arguments."""
    own = set(inspect.signature(fit).parameters)
    return [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["fit"] and f.name not in own]


def fit(model: nn.Module | str, train_data, *, method: str = "pgd", eps: float | str | None = None, epochs: int = 10,
        out: str | None = None, val_data=None, test_data=None, batch_size: int | None = None,
        optimizer: str | None = None, lr: float | None = None, method_params: dict | None = None,
        callbacks: Sequence[Any] = (), normalize=None, model_options: dict | None = None,
        factory: str | None = None,
        num_classes: int | None = None, classes: Sequence[str] = (), crop_pad: int = 0, flip: bool = False,
        resume: bool = False, progress: bool | None = None, echo: Callable[[str], None] = print,
        **options: Any) -> dict:
    """Adversarially train ``model`` on ``train_data``; writes the run folder ``out`` and returns its summary.

    ``model``: any ``torch.nn.Module`` mapping float images (N, C, H, W) in [0, 1] to logits (N, classes);
    it is trained in place (it holds the best checkpoint's weights at the end, in the train/eval mode it
    came in). ``normalize=(mean, std)`` (or ``"dataset"``) wraps a model that expects normalised input.

    How ``load_model(out)`` rebuilds the model in a new process is recorded: ``factory="pkg.module:fn"``
    (e.g. ``"torchvision.models:resnet18"``) with ``model_options`` (its keyword arguments; ``num_classes``
    is passed to a factory that takes it or ``**kwargs``), else the model's class called with
    ``model_options``. ``model`` may also be that reference itself, built here: ``fit("timm:create_model",
    data, model_options={"model_name": "resnet18"})``. When the record cannot rebuild the model
    (a class needing arguments it was not given, a class defined in ``__main__``), fit says so once at
    the start; ``load_model(out, model=...)`` then loads the weights into a module you build.

    ``train_data``, ``val_data``, ``test_data``: a torch Dataset of (image, label) pairs (tensor, numpy or PIL
    images; or dicts with an image and a label key, e.g. ``image`` and ``label``), a DataLoader, or a pair of tensors ``(x, y)``; pixels in [0, 1] (floats) or 0..255 (uint8).
    They are held in memory as 8-bit pixels; with ``stream=True`` a Dataset is read item by item when
    needed, in ``workers`` DataLoader processes (see :mod:`fastrobust.data.stream`). Without ``val_data`` a held-out split of ``val_size``
    examples is taken from ``train_data``; without ``test_data`` the run has no test evaluation.
    ``num_classes`` defaults to the largest label + 1; ``crop_pad``/``flip``: training augmentation.

    Every option of ``fastrobust train`` is accepted by the same name (``alpha``, ``val_size``, ``seed``,
    ``lr_schedule``, ``device``, ``amp``, ...); ``callbacks`` as in :func:`fastrobust.train`.
    ``resume=True`` continues the run in ``out`` (give the same model and data).
    """
    from .data.user import make_data, to_lazy_split, to_split
    from .engine import train
    from .models import Classifier, check_output

    if isinstance(model, str) and factory is None:
        factory, model = model, None
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"fit: model must be a torch.nn.Module or a 'package.module:factory' reference, got a "
                          f"{type(model).__name__}")
    if factory is not None and not is_factory_ref(factory):
        raise ConfigError(f"fit: factory must name an importable callable as 'package.module:callable' (e.g. "
                          f"'torchvision.models:resnet18'), got {factory!r}")
    unknown = sorted(set(options) - set(_fit_keys()))
    if unknown:
        raise ConfigError(f"fit: unknown argument(s) {', '.join(unknown)}; fit takes the options of "
                          f"`fastrobust train` by name: {', '.join(sorted(_fit_keys()))}")
    if isinstance(model, Classifier):   # a fastrobust model: train its network, keep its normalisation
        if normalize is None:
            normalize = [model.normalize.mean.flatten().tolist(), model.normalize.std.flatten().tolist()]
        model = model.net
    if normalize is not None and not isinstance(normalize, str):
        normalize = [[float(v) for v in part] for part in normalize]
    model_options = dict(model_options or {})

    convert = to_lazy_split if options.get("stream") is True else to_split
    train_split = convert(train_data, "fit: train_data")
    val_split = None if val_data is None else convert(val_data, "fit: val_data")
    test_split = None if test_data is None else convert(test_data, "fit: test_data")
    facts = dict(num_classes=num_classes, classes=tuple(classes), crop_pad=crop_pad, flip=flip)
    data = make_data("fit", train_split, test_split, val_split, **facts)
    if val_split is not None:
        options["val_size"] = len(val_split)   # recorded; the given split is used as it is

    shape = dict(num_classes=data.info.num_classes, in_channels=data.info.channels,
                 image_size=tuple(data.info.image_size))
    if model is None:   # built here from the reference the user gave
        model = call_factory(factory, "fit: model", model_options, shape)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"fit: {factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    was_training = model.training
    model = model.cpu()
    check_output(lambda: model, _class_name(model), **shape)
    ref = factory or ref_of_class(model)
    if ref is None:
        ref, model_options = UNIMPORTABLE_MODEL_REF, {"class": _class_name(model)}
        echo(f"fit: load_model({out!r}) will not rebuild the model in another process: its class {_class_name(model)} "
             f"is defined in __main__ or inside a function; move it into a module, pass factory='pkg.module:fn', "
             f"or load the weights with load_model(run, model=YourNet(...))")
    else:
        problem = rebuild_problem(model, ref, model_options, shape)
        if problem:
            echo(f"fit: load_model({out!r}) will not rebuild the model in another process: {problem}; pass "
                 f"factory='pkg.module:fn' (e.g. 'torchvision.models:resnet18') with model_options, or load the "
                 f"weights with load_model(run, model=YourNet(...))")
    cfg = TrainConfig(method=method, dataset=DATA_REF, model=ref, model_options=model_options, normalize=normalize,
                      epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, eps=eps,
                      method_params=dict(method_params or {}), out=None if out is None else str(out))
    cfg.update(options, "fit")
    try:
        return train(cfg, resume=resume, progress=progress, echo=echo, callbacks=callbacks, model=model, data=data)
    finally:
        model.train(was_training)


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def rebuild_problem(model: nn.Module, ref: str, options: dict, shape: dict) -> str | None:
    """Why ``ref`` called with ``options`` (and the data's ``shape`` facts) would not rebuild ``model`` (built
    without memory and compared parameter by parameter); None when it would."""
    try:
        with torch.device("meta"):
            rebuilt = call_factory(ref, "fit: model", options, shape)
    except FastrobustError as exc:
        return str(exc)
    if not isinstance(rebuilt, nn.Module):
        return f"{ref} returns a {type(rebuilt).__name__}"
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
        return (f"{ref}({', '.join(f'{k}={v!r}' for k, v in options.items())}) builds a different network "
                f"({diff[0]}: {mine.get(diff[0])} here, {theirs.get(diff[0])} rebuilt)")
    return None


def data(**_: Any):
    """What :data:`DATA_REF` names outside a :func:`fit` call: the data is not stored with the run."""
    raise DataError("this run was trained with fastrobust.fit on data given from Python, which is not stored with "
                    "the run; evaluate it with fastrobust.evaluation.evaluate(fastrobust.load_model(run_dir), x, y, "
                    "eps=...) on your test data")


def unimportable_model(**options: Any):
    """What :data:`UNIMPORTABLE_MODEL_REF` names: the class of a :func:`fit` model no other process can import."""
    raise ConfigError(f"the model class {options.get('class', '?')} was defined where another process cannot import "
                      f"it (in __main__ or inside a function); move it into an importable module, or build it "
                      f"yourself and pass it")
