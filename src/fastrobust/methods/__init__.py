"""Training methods: an attack x a loss x a strength schedule, each named method one registration
(``catalog.py``), all behind :class:`Method` (see docs/methods.md)."""

from .base import (
    BACKWARD,
    FORWARD,
    Batch,
    Component,
    Method,
    MethodContext,
    Param,
    StepOutput,
)
from .registry import get_method, list_methods, register_method
from .compose import Composed, define, replay_minibatch
from . import catalog  # noqa: F401  (registers the named methods)

__all__ = [
    "BACKWARD", "FORWARD", "Batch", "Component", "Composed", "Method", "MethodContext", "Param",
    "StepOutput", "define", "replay_minibatch", "get_method", "list_methods", "register_method",
]
