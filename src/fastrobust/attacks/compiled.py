"""Attacks on a ``torch.compile``d model (``fastrobust train --compile``): input gradients only, static shapes.

Eager PyTorch computes only what ``torch.autograd.grad(loss, x)`` asks for, so an attack step that needs the
input gradient never computes the weights' gradients. A compiled model's backward graph is fixed when it is
traced, from which of its inputs require a gradient: with the parameters requiring one, every attack step
would also compute (and throw away) the weight gradients. :func:`input_grad_only` turns the parameters'
``requires_grad`` off for the attack's forward, so that the compiled attack graph computes the input gradient
alone (eager models are left as they are: nothing to gain).

The rule for shapes under ``--compile``: one graph per minibatch shape (``dynamic=False``, see
:mod:`fastrobust.engine.compile`). Work whose batch size depends on the data (an early-stopped attack's
running examples, GAAT's refreshed examples) calls the eager module (:func:`eager`) or is masked over the
whole batch, so that no new shape reaches the compiled model after the first epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def is_compiled(model) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper (an ``OptimizedModule``)."""
    return type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), torch.nn.Module)


def eager(model):
    """The module itself behind a compiled wrapper (``model`` when it is not one): for calls whose batch size
    varies with the data, which would otherwise compile a graph per size."""
    return model._orig_mod if is_compiled(model) else model


def unwrapped(model):
    """The user's module behind the engine's DistributedDataParallel and torch.compile wrappers, for forwards
    that must reach its submodules' hooks and stop midway (no gradient synchronisation is wanted there)."""
    while True:
        inner = eager(model)
        if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
            inner = inner.module
        if inner is model:
            return model
        model = inner


@contextmanager
def input_grad_only(model) -> Iterator[None]:
    """For the block, the parameters of a compiled ``model`` require no gradient (restored after, even on an
    exception), so that its traced backward computes input gradients only; a no-op for an eager model."""
    if not is_compiled(model):
        yield
        return
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
