"""Checkpoints and other run files, always written atomically.

A file is written to a temporary name in the same folder, flushed to disk
and moved into place with ``os.replace``, so a crash never leaves a broken
file: readers see the old version or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import FastrobustError

FORMAT = "fastrobust-checkpoint"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    _atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a fastrobust checkpoint, refusing other files with a clear message."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
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
        raise FastrobustError(f"{path} cannot be read as a checkpoint (corrupted or truncated?): {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FastrobustError(f"{path} is not a fastrobust checkpoint (no '{FORMAT}' marker); use a best.pt/last.pt written by `fastrobust train`")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise FastrobustError(f"{path} was written by a newer fastrobust (format {payload['format_version']}); upgrade fastrobust")
    return payload


def model_spec(name: str, info, options: dict) -> dict:
    """Everything needed to rebuild a model: saved in every checkpoint."""
    return dict(name=name, num_classes=info.num_classes, in_channels=info.channels, image_size=list(info.image_size),
                mean=list(info.mean), std=list(info.std), options=dict(options))


def build_model(spec: dict):
    """A fresh model from a :func:`model_spec` (unknown names or options raise ConfigError)."""
    from ..models import create_model

    return create_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                        image_size=tuple(spec["image_size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                        **spec["options"])


def model_from_checkpoint(payload: dict, device: str | torch.device = "cpu"):
    """Rebuild the model of a checkpoint, weights loaded, in eval mode."""
    model = build_model(payload["model_spec"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained model from a checkpoint or run directory (``best.pt`` first).

    The model is in eval mode, takes [0,1] images (normalisation is its first
    layer) and returns logits, so any third-party attack can be run on it.
    """
    return model_from_checkpoint(load_checkpoint(path), device)
