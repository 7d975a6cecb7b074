"""The training engine: loop, schedules, checkpoints, cost accounting, processes."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .schedules import LRSchedule, eps_scale
from .trainer import train

__all__ = ["LRSchedule", "eps_scale", "load_checkpoint", "load_model", "save_checkpoint", "train"]
