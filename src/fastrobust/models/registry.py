"""The model registry: named builders, their options, and :func:`create_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fastrobust.errors import ConfigError
from fastrobust.models.layers import Classifier

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
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    entry, builder = _REGISTRY[name]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in entry.options.items()) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for model {name!r}; its options: {allowed}")
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
    return Classifier(builder(num_classes, in_channels, size, **options), mean, std)


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
