"""Checkpoints and other run files, always written atomically.

A file is written to a temporary name in the same folder, flushed to disk
and moved into place with ``os.replace``, so a crash never leaves a broken
file: readers see the old version or the new one. A write that fails (a full
disk, a read-only folder) raises :class:`WriteError`, a user-facing error that
says what to do; the file it was to replace is left as it was. A process killed
while writing leaves its temporary file (``.NAME.XXXX.tmp``), which
:func:`remove_temporary_files` clears when the next run starts in that folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import trust
from ..errors import ConfigError, FastrobustError
from ..runfolder import BEST, LAST
from ..trust import UntrustedCode

FORMAT = "fastrobust-checkpoint"
FORMAT_VERSION = 1
#: an exported model (``fastrobust export``): a folder of these two files
EXPORT_FORMAT = "fastrobust-export"
EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"


class WriteError(FastrobustError, OSError):
    """A file could not be written (full disk, read-only or missing folder); the message names the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(path: Path, exc: BaseException) -> WriteError:
    """A :class:`WriteError` for ``exc`` raised while writing ``path``, with the likely fix."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or "unexpected pos" in str(exc):
        try:
            free = f" ({shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free)"
        except OSError:
            free = ""
        why = f"no space left on the device{free}; free some space and run the command again " \
              "(a training run continues with --resume; the files already written are intact)"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"{os.strerror(code).lower()}; choose a writable location"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why = "a file stands where a folder is needed; choose another location"
    elif getattr(exc, "strerror", None):
        why = f"{exc.strerror[:1].lower()}{exc.strerror[1:]}; choose a writable location"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return WriteError(code or errno.EIO, f"cannot write {path}: {why}")


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write of its zip archive as RuntimeError("... unexpected pos ...")
        if isinstance(exc, OSError) and not isinstance(exc, FastrobustError) or \
                isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):
            raise write_error(path, exc) from None
        raise


TMP_SUFFIX = ".tmp"


def check_writable(path: Path) -> None:
    """Refuse now, with the fix, a file that could not be written later (a folder in its place, a
    read-only or missing location): its folder is created and a temporary file tried there."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"cannot write {path}: it is a folder; give a file name, e.g. {path / 'eval.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise write_error(path, exc) from None


def remove_temporary_files(folder: Path, names) -> list[str]:
    """Delete the temporary files that writes of ``names`` killed midway left in ``folder``
    (call it only while holding the folder's lock); returns the names removed."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def require_safetensors():
    """The ``safetensors.torch`` module, or a FastrobustError saying how to install it."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise FastrobustError('exported models are stored with safetensors, which is not installed: '
                              'pip install "fastrobust[export]" (or pip install safetensors)') from None
    return st


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    _atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a fastrobust checkpoint, refusing other files with a clear message."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FastrobustError(f"{path} is a folder without best.pt or last.pt: is it a fastrobust run directory?")
    if not path.is_file():
        raise FastrobustError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        # torch's own message advises loading with weights_only=False, i.e. running the file's code: not repeated
        if "unsupported global" in str(exc).lower() or "global" in str(exc).lower() and "weights only" in str(exc).lower():
            raise FastrobustError(f"{path} is not a fastrobust checkpoint: it holds Python objects other than tensors "
                                  f"and plain data (possibly code), which fastrobust never loads; use a best.pt/last.pt "
                                  f"written by `fastrobust train`") from None
        raise FastrobustError(f"{path} is not a fastrobust checkpoint: it cannot be read ({type(exc).__name__}; "
                              f"corrupted, truncated or another kind of file); use a best.pt/last.pt written by "
                              f"`fastrobust train`") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FastrobustError(f"{path} is not a fastrobust checkpoint (no '{FORMAT}' marker); use a best.pt/last.pt written by `fastrobust train`")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise FastrobustError(f"{path} was written by a newer fastrobust (format {payload['format_version']}); upgrade fastrobust")
    return payload


def model_spec(name: str, info, options: dict, normalize=None) -> dict:
    """Everything needed to rebuild a model: saved in every checkpoint.

    The input normalisation is the data set's for a built-in model and none (pixels in [0, 1]) for a
    user's ``package.module:factory`` model; ``normalize`` overrides it: ``"dataset"`` (the data
    set's statistics) or ``(mean, std)`` with one value per channel.
    """
    mean, std = normalization(name, info, normalize)
    return dict(name=name, num_classes=info.num_classes, in_channels=info.channels, image_size=list(info.image_size),
                mean=mean, std=std, options=dict(options))


def normalization(name: str, info, normalize=None) -> tuple[list[float], list[float]]:
    """The (mean, std) a model of ``name`` on data ``info`` gets (see :func:`model_spec`)."""
    from ..factories import is_factory_ref

    if normalize is None:
        normalize = None if is_factory_ref(name) else "dataset"
    if normalize == "dataset":
        return list(info.mean), list(info.std)
    if normalize is None or normalize == "none":
        return [0.0] * info.channels, [1.0] * info.channels
    try:
        mean, std = ([float(v) for v in part] for part in normalize)
    except (TypeError, ValueError):
        raise ConfigError(f"normalize must be 'dataset', 'none' or (mean, std) with one value per channel each, "
                          f"got {normalize!r}") from None
    if len(mean) != info.channels or len(std) != info.channels or not all(s > 0 for s in std):
        raise ConfigError(f"normalize: mean and std need {info.channels} value(s) each (one per channel), std > 0; "
                          f"got {mean} and {std}")
    return mean, std


def build_model(spec: dict, net=None):
    """A fresh model from a :func:`model_spec` (unknown names or options raise ConfigError).

    ``net``: the network itself (``fit``'s model, which ``spec`` names for other processes), wrapped
    with the spec's input normalisation instead of being built."""
    from ..models import Classifier, create_model

    options = dict(spec["options"])
    for key in ("num_classes", "in_channels", "image_size"):   # given as model options too: they must agree
        if key in options:
            value = options.pop(key)
            if (list(value) if isinstance(value, (list, tuple)) else value) != \
                    (list(spec[key]) if isinstance(spec[key], (list, tuple)) else spec[key]):
                raise ConfigError(f"model option {key}={value!r} disagrees with the data ({key} {spec[key]!r}); "
                                  f"drop the option (fastrobust passes the data's {key} to the model)")
    if net is not None:
        return Classifier(net, tuple(spec["mean"]), tuple(spec["std"]))
    return create_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                        image_size=tuple(spec["image_size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                        **options)


def check_model(spec: dict, net=None) -> torch.nn.Module:
    """Build the model of ``spec`` (without memory where possible) and refuse it, before any training,
    if it cannot be built or its output on a dummy batch is not ``(N, num_classes)`` (``net``: see
    :func:`build_model`). Returns the model built (perhaps on the ``meta`` device)."""
    from ..models import check_output

    return check_output(lambda: build_model(spec, net), spec["name"], spec["num_classes"], spec["in_channels"], spec["image_size"])


def model_from_checkpoint(payload: dict, device: str | torch.device = "cpu", model=None):
    """Rebuild the model of a checkpoint, weights loaded, in eval mode.

    ``model``: a module to load the weights into instead of rebuilding it (the bare network the
    run trained, or a fastrobust ``Classifier``); it is wrapped with the run's input normalisation.
    """
    from ..factories import is_factory_ref
    from ..models import Classifier

    spec = payload["model_spec"]
    if model is None:
        try:
            model = build_model(spec)
        except UntrustedCode:
            raise
        except ConfigError as exc:
            if not is_factory_ref(spec["name"]):
                raise
            raise ConfigError(f"the model of this run cannot be rebuilt here: {exc}; or build it yourself and pass "
                              f"it: fastrobust.load_model(path, model=YourNet(...))") from None
    elif not isinstance(model, Classifier):
        model = Classifier(model, spec["mean"], spec["std"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise FastrobustError(f"the weights of this run do not fit the given model ({str(exc).splitlines()[0]}); "
                              f"pass a module built as in the run (its model: {spec['name']} with options "
                              f"{spec['options']})") from None
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", model=None, trust_code: bool = False):
    """Load a trained model from a checkpoint, run directory (``best.pt`` first) or export folder.

    The model is in eval mode, takes [0,1] images (normalisation is its first
    layer) and returns logits, so any third-party attack can be run on it.
    ``model``: load the weights into this module instead of rebuilding the run's
    (see :func:`model_from_checkpoint`). A model built by a ``package.module:factory``
    is rebuilt only when that code is trusted (``trust_code=True``, the user's allow-list,
    or a run the user trained in that folder: see :mod:`fastrobust.trust`).
    """
    folder = folder_of(path)
    with trust.reading(folder, trust_code):
        if is_exported(path):
            return load_exported(path, device, model, trust_code)
        payload = load_checkpoint(path)
        if model is None:
            trust.require({"model factory": payload.get("model_spec", {}).get("name")}, folder, trust_code)
        return model_from_checkpoint(payload, device, model)


def folder_of(path: str | os.PathLike) -> Path:
    """The folder whose files describe ``path``: itself for a folder, else the one it lies in."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``fastrobust export``."""
    path = Path(path)
    return path.is_dir() and (path / EXPORT_WEIGHTS).is_file() and (path / EXPORT_CONFIG).is_file()


def load_exported(path: str | os.PathLike, device: str | torch.device = "cpu", model=None, trust_code: bool = False):
    """The model of an exported folder (see :func:`load_model`)."""
    import json

    path = Path(path)
    try:
        config = json.loads((path / EXPORT_CONFIG).read_text())
        m, inp = config["model"], config["input"]
        if config.get("format") != EXPORT_FORMAT:
            raise KeyError("format")
    except (ValueError, KeyError, TypeError) as exc:
        raise FastrobustError(f"{path / EXPORT_CONFIG} is not the config.json of a `fastrobust export` ({exc})") from None
    try:
        weights = require_safetensors().load_file(str(path / EXPORT_WEIGHTS))
    except FastrobustError:
        raise
    except Exception as exc:
        raise FastrobustError(f"{path / EXPORT_WEIGHTS} cannot be read ({type(exc).__name__}: {exc})") from None
    spec = dict(name=m["name"], num_classes=m["num_classes"], in_channels=m["in_channels"], image_size=m["image_size"],
                mean=inp["mean"], std=inp["std"], options=m["options"])
    if model is None:
        trust.require({"model factory": spec["name"]}, path, trust_code)
    state = {"net." + k: v for k, v in weights.items()}
    from ..models import Normalize

    state.update({f"normalize.{k}": v for k, v in Normalize(spec["mean"], spec["std"]).state_dict().items()})
    return model_from_checkpoint({"model_spec": spec, "model": state}, device, model)
