"""The model registry: named builders, their options, and :func:`create_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastrobust.errors import ConfigError
from fastrobust.factories import call_factory, is_factory_ref
from fastrobust.models.layers import Classifier

#: what ``fastrobust models`` and the docs say about ``--model package.module:factory``
FACTORY_HELP = """\
Your own model: --model package.module:factory
  factory is any importable callable returning a torch.nn.Module that maps a float batch
  (N, C, H, W) to logits (N, num_classes). --model-opt KEY=VALUE (repeatable) are passed to it
  as keyword arguments; it also gets num_classes, in_channels and image_size if it declares
  parameters of those names. By default the model takes pixels in [0, 1]; for a model that expects
  normalised input, pass --normalize dataset (the data set's mean/std) or --normalize MEAN/STD
  (e.g. 0.49,0.48,0.45/0.25,0.24,0.26). The reference and its options are saved with the run, so
  fastrobust.load_model(run_dir) rebuilds the model in any process that can import it;
  fastrobust.load_model(run_dir, model=MyNet()) loads the weights into a module you built.
  Its output shape is checked on one dummy batch before training starts.
  Example: fastrobust train --model mypkg.nets:make_net --model-opt depth=10 --dataset cifar10"""

#: ``builder(num_classes, in_channels, image_size, **options) -> nn.Module`` (normalised input).
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, a one-line description and its options with their defaults."""

    name: str
    description: str
    options: dict[str, Any]


_REGISTRY: dict[str, tuple[ModelEntry, Builder]] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes, in_channels, image_size, *, **options)``.

    The builder's keyword-only parameters (all with defaults) are the model's options.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        params = inspect.signature(builder).parameters.values()
        options = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        _REGISTRY[name] = (ModelEntry(name, description, options), builder)
        return builder

    return decorate


def list_models() -> list[ModelEntry]:
    """All registered models, sorted by name."""
    return [entry for _, (entry, _) in sorted(_REGISTRY.items())]


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> Classifier:
    """Build registered model ``name`` as a :class:`Classifier` of ``[0, 1]`` pixels.

    ``image_size`` is ``(height, width)`` (an int means a square). ``mean`` and
    ``std`` (one value per channel) default to 0 and 1, i.e. no normalisation.
    Remaining keyword arguments are the model's options (see :func:`list_models`).
    """
    if is_factory_ref(name):
        return _from_factory(name, num_classes, in_channels, image_size, mean, std, options)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    entry, builder = _REGISTRY[name]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in entry.options.items()) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for model {name!r}; its options: {allowed}")
    num_classes, in_channels, size, mean, std = _check_shape_args(num_classes, in_channels, image_size, mean, std)
    return Classifier(builder(num_classes, in_channels, size, **options), mean, std)


def _check_shape_args(num_classes, in_channels, image_size, mean, std):
    num_classes = int_option("num_classes", num_classes)
    in_channels = int_option("in_channels", in_channels)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2:
        raise ConfigError(f"image_size must be (height, width), got {image_size!r}")
    size = (int_option("image height", size[0]), int_option("image width", size[1]))
    mean = (0.0,) * in_channels if mean is None else tuple(mean)
    std = (1.0,) * in_channels if std is None else tuple(std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(
            f"mean and std need in_channels={in_channels} values each; got {len(mean)} and {len(std)}"
        )
    return num_classes, in_channels, size, mean, std


def _from_factory(ref, num_classes, in_channels, image_size, mean, std, options) -> Classifier:
    """A :class:`Classifier` around the module returned by the user's callable ``ref``."""
    num_classes, in_channels, size, mean, std = _check_shape_args(num_classes, in_channels, image_size, mean, std)
    net = call_factory(ref, "--model", options,
                       {"num_classes": num_classes, "in_channels": in_channels, "image_size": size})
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--model {ref!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return Classifier(net, mean, std)


def check_output(build: Callable[[], nn.Module], name: str, num_classes: int, in_channels: int,
                 image_size: Sequence[int]) -> nn.Module:
    """Refuse a model whose output on one dummy batch is not ``(N, num_classes)`` logits; returns the model built.

    ``build()`` is called under the ``meta`` device first (no memory, no compute); a model
    whose forward cannot run there is built and run once on the CPU instead.
    """
    shape = (2, in_channels, *image_size)
    try:
        with torch.device("meta"):
            model = build()
        out = _dummy_forward(model, shape)
    except ConfigError:
        raise
    except Exception:   # e.g. an operation without a meta kernel, or a module built on the CPU anyway
        model = build()
        try:
            out = _dummy_forward(model, shape)
        except Exception as exc:
            raise ConfigError(f"model {name!r} fails on a dummy batch of shape {shape}: {type(exc).__name__}: {exc}; "
                              f"it must map float images (N, C, H, W) in [0, 1] to logits (N, classes)") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {name!r} returns {got} for a batch of shape {shape}; it must return logits of "
                          f"shape (N, {num_classes}) (N images, {num_classes} classes of this data set)")
    return model


def _dummy_forward(model: nn.Module, shape: tuple[int, ...]):
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()   # leave BatchNorm statistics alone
    try:
        with torch.no_grad():
            return model(torch.full(shape, 0.5, device=device))
    finally:
        model.train(was_training)


def int_option(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def rate_option(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1)`` (a dropout rate), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)
