"""Training methods, one small module per family, all behind :class:`Method`."""

from .base import (
    BACKWARD,
    FORWARD,
    Batch,
    Method,
    MethodContext,
    Param,
    StepOutput,
    get_method,
    list_methods,
    register_method,
)
from . import deat, fgsm_rs, free, gaat, mart, natural, pgd, trades  # noqa: F401  (register the methods)

__all__ = [
    "BACKWARD", "FORWARD", "Batch", "Method", "MethodContext", "Param", "StepOutput",
    "get_method", "list_methods", "register_method",
]
