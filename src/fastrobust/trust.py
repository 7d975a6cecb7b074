"""Whether fastrobust may import and call a ``package.module:callable`` named in a folder.

A run folder (its ``config.yaml`` and checkpoints) or an export folder (its ``config.json``)
records the user's model and data factories by reference. Importing and calling such a
reference runs code, so a folder received from someone else could run anything. A reference
read from a folder is imported only when one of these holds:

- the caller trusts the folder: ``trust_code=True`` in Python, ``--trust-code`` on the command line;
- the reference is on the user's allow-list: the environment variable ``FASTROBUST_TRUSTED_CODE``
  or the file ``trusted-code.txt`` in the user's fastrobust folder (:func:`config_dir`), each a
  list of references (``mypkg.nets:make_net``) or module prefixes (``mypkg``: every callable in
  ``mypkg`` and its submodules), separated by commas, spaces or lines (``#`` starts a comment);
- the user named it for this command (``--model`` / ``--dataset`` given again with ``--resume``);
- fastrobust recorded it when the user trained or exported into that very folder on this machine
  (``trusted-runs.json`` in the user's fastrobust folder): a run is reloaded, evaluated, resumed
  and exported by its own author without a flag, while a copy of it elsewhere is not trusted.

Built-in model and data set names are not code and need no trust. This module imports
nothing of fastrobust but its errors and the names of run-folder files.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

#: environment variable: the allow-list (references or module prefixes)
TRUSTED_ENV = "FASTROBUST_TRUSTED_CODE"
#: environment variable: the user's fastrobust folder (default ``$XDG_CONFIG_HOME/fastrobust``)
CONFIG_DIR_ENV = "FASTROBUST_CONFIG_DIR"
ALLOW_FILE, RUNS_FILE = "trusted-code.txt", "trusted-runs.json"
#: references of fastrobust's own that only raise an explanation (a fit() run's data and unimportable model)
BUILTIN = frozenset({"fastrobust.fitting:data", "fastrobust.fitting:unimportable_model"})


class UntrustedCode(ConfigError):
    """A folder names code that the caller has not trusted; nothing was imported."""


def config_dir() -> Path:
    """The user's fastrobust folder: ``$FASTROBUST_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/fastrobust``,
    else ``~/.config/fastrobust``."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "fastrobust"


def is_ref(name: object) -> bool:
    return isinstance(name, str) and ":" in name


def allow_list() -> list[str]:
    """The entries of the user's allow-list (environment variable, then file)."""
    text = os.environ.get(TRUSTED_ENV, "")
    path = config_dir() / ALLOW_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text += "\n" + path.read_text()
    entries = []
    for line in text.splitlines():
        entries += [e for e in re.split(r"[,\s]+", line.split("#", 1)[0]) if e]
    return entries


def on_allow_list(ref: str) -> bool:
    module = ref.split(":", 1)[0]
    for entry in allow_list():
        if entry == ref or (":" not in entry and (module == entry or module.startswith(entry + "."))):
            return True
    return False


def _key(folder: str | os.PathLike) -> str:
    return str(Path(folder).expanduser().resolve())


def _read_runs() -> dict[str, list[str]]:
    try:
        runs = json.loads((config_dir() / RUNS_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return runs if isinstance(runs, dict) else {}


def remember(folder: str | os.PathLike, refs: Iterable[object]) -> None:
    """Record that the user trained or exported into ``folder`` with ``refs`` (no-op without references;
    a failure to write the record only costs the convenience)."""
    refs = sorted({r for r in refs if is_ref(r) and r not in BUILTIN})
    if not refs:
        return
    runs = _read_runs()
    key = _key(folder)
    runs[key] = sorted(set(runs.get(key, [])) | set(refs))
    path = config_dir() / RUNS_FILE
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{RUNS_FILE}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(runs, fh, indent=1)
        os.replace(tmp, path)


def remembered(folder: str | os.PathLike, ref: str) -> bool:
    """Whether the user trained or exported into ``folder`` (this exact path) with ``ref``."""
    return ref in _read_runs().get(_key(folder), [])


def trusted(ref: str, folder: str | os.PathLike | None, trust_code: bool = False, given: Iterable[str] = ()) -> bool:
    """Whether ``ref``, read from ``folder``, may be imported and called (see the module's rules)."""
    return (not is_ref(ref) or ref in BUILTIN or trust_code or ref in set(given) or on_allow_list(ref)
            or (folder is not None and remembered(folder, ref)))


def refusal(ref: str, what: str, folder: str | os.PathLike | None) -> UntrustedCode:
    where = f"{folder} names" if folder is not None else "the folder names"
    what = {"--model": "model factory", "--dataset": "data set factory"}.get(what, what)
    return UntrustedCode(f"{where} the {what} {ref!r}, code that fastrobust imports and runs only if you trust it; "
                         f"nothing was imported. If you trust it: pass trust_code=True (Python) or --trust-code "
                         f"(command line), or add {ref!r} to {TRUSTED_ENV} or {config_dir() / ALLOW_FILE}")


def require(refs: dict[str, object], folder: str | os.PathLike | None, trust_code: bool = False,
            given: Iterable[str] = ()) -> None:
    """Refuse, before anything is imported, the first reference of ``refs`` (``{what: ref}``) not trusted."""
    given = set(given)
    for what, ref in refs.items():
        if is_ref(ref) and not trusted(ref, folder, trust_code, given):
            raise refusal(ref, what, folder)


@dataclass
class _Scope:
    folder: str | os.PathLike | None
    trust_code: bool
    given: set[str] = field(default_factory=set)


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("fastrobust_trust_scope", default=None)


@contextlib.contextmanager
def reading(folder: str | os.PathLike | None, trust_code: bool = False, given: Iterable[str] = ()) -> Iterator[None]:
    """Within the block, every reference that fastrobust resolves (:func:`check`) is held to the rules
    for code named in ``folder``: the net under the explicit :func:`require` of each entry point."""
    token = _SCOPE.set(_Scope(folder, trust_code, set(given)))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def check(ref: str, what: str) -> None:
    """Called before ``ref`` is imported: refuse it inside a :func:`reading` block unless trusted."""
    scope = _SCOPE.get()
    if scope is not None and not trusted(ref, scope.folder, scope.trust_code, scope.given):
        raise refusal(ref, what, scope.folder)
