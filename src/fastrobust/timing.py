"""Timing work on a device: wait for its queued work before reading the clock.

This module imports nothing of fastrobust: every layer may use it (training and evaluation time their work).
"""

from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (so that wall-clock timings measure it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
