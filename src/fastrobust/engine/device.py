"""Picking the device a job runs on (``--device``), shared by training and ``fastrobust eval``."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def pick_device(name: str) -> torch.device:
    """The torch device for ``--device`` ``name`` (``auto``: CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)

