"""User-supplied builders named ``package.module:callable`` (``--model`` and ``--dataset``).

A reference names an importable callable; :func:`call_factory` imports it,
passes the user's keyword arguments plus the ones fastrobust can supply that
the callable declares (e.g. ``num_classes``, also given to a callable taking ``**kwargs``), and turns every failure into a
one-line :class:`~fastrobust.errors.ConfigError` that says what to fix.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from . import trust
from .errors import ConfigError, FastrobustError

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_ref(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:callable``."""
    return isinstance(name, str) and ":" in name


def resolve(ref: str, what: str) -> Callable[..., Any]:
    """The callable named ``ref`` (``package.module:attr.path``); ``what`` (e.g. "--model") names the option."""
    trust.check(ref, what)   # a reference read from a folder: imported only when trusted
    if not _REF.match(ref):
        raise ConfigError(f"{what} {ref!r}: expected package.module:callable (e.g. mypkg.nets:make_net)")
    module_name, attr_path = ref.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {ref!r}: module {module_name!r} cannot be imported ({exc}); install the package "
                          f"or add its folder to PYTHONPATH") from None
    except Exception as exc:  # the user's module raised while being imported
        raise ConfigError(f"{what} {ref!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {ref!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {ref!r}: {attr_path!r} is a {type(obj).__name__}, not a callable")
    return obj


def call_factory(ref: str, what: str, options: dict[str, Any], provided: dict[str, Any] | None = None) -> Any:
    """Call the callable ``ref`` with ``options`` and those of ``provided`` it declares (and ``options`` lacks)."""
    fn = resolve(ref, what)
    kwargs = dict(options)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    # num_classes also goes to a callable taking **kwargs (torchvision's and timm's factories pass it on)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (provided or {}).items():
        if key not in kwargs and (key in params or takes_any and key == "num_classes"):
            kwargs[key] = value
    try:
        return fn(**kwargs)
    except TypeError as exc:
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError:
            given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
            raise ConfigError(f"{what} {ref!r} cannot be called with {given} ({exc}); its signature is "
                              f"{ref.split(':', 1)[1]}{_signature(fn)}") from None
        raise ConfigError(f"{what} {ref!r} raised {type(exc).__name__}: {exc}") from None
    except FastrobustError:   # the callable's own clear message
        raise
    except Exception as exc:  # the user's callable failed: say which one and how
        raise ConfigError(f"{what} {ref!r} raised {type(exc).__name__}: {exc}") from None


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def ref_of_class(obj: object) -> str | None:
    """``module:QualName`` of ``obj``'s class when another process could import it, else None."""
    cls = type(obj)
    module, qualname = cls.__module__, cls.__qualname__
    if module in ("__main__", "builtins") or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is cls else None
