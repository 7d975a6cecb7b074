"""The registry of training methods: ``define`` (compose.py) and ``register_method`` add to it."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}. Available methods: {', '.join(sorted(_REGISTRY))} (see `fastrobust methods`)")
    return _REGISTRY[name]


def list_methods() -> list[type[Method]]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
