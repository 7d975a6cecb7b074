"""Threat models: random starts, steepest-ascent directions and projections.

Perturbations ``delta`` are kept inside the ``eps`` ball of their norm and such
that ``x + delta`` stays in the ``[0, 1]`` pixel box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from fastrobust.errors import ConfigError


def per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values ``(B,)`` to broadcast against ``like`` ``(B, ...)``."""
    return v.view(-1, *[1] * (like.dim() - 1))


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return per_example(t.flatten(1).norm(dim=1), t)


def _box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(delta, -x, 1 - x)


def project_linf(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection onto ``{||delta||_inf <= eps, 0 <= x + delta <= 1}``."""
    return _box(delta.clamp(-eps, eps), x)


def project_l2(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Rescale each example's ``delta`` into the L2 ball of radius ``eps``, then clip to the pixel box.

    Clipping only shrinks coordinates, so the result stays in the ball.
    """
    scale = (eps / _l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return _box(delta * scale, x)


def _draw(
    sample: Callable, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``sample(shape)`` (``torch.rand``/``torch.randn``) on the generator's device, moved to ``like``'s."""
    device = like.device if generator is None else generator.device
    drawn = sample(shape, generator=generator, device=device, dtype=like.dtype)
    return drawn if device == like.device else drawn.to(like.device)


def _linf_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    return (2 * _draw(torch.rand, x.shape, x, generator) - 1) * eps


def _l2_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform in the ball: a Gaussian direction times a radius ``eps * U^(1/d)``."""
    direction = _draw(torch.randn, x.shape, x, generator)
    radius = eps * _draw(torch.rand, (len(x),), x, generator) ** (1 / x.shape[1:].numel())
    return direction / _l2_norm(direction).clamp_min(1e-12) * per_example(radius, x)


def _linf_direction(grad: torch.Tensor) -> torch.Tensor:
    return grad.sign()


def _l2_direction(grad: torch.Tensor) -> torch.Tensor:
    return grad / _l2_norm(grad).clamp_min(1e-12)


class ThreatModel(NamedTuple):
    """A threat model: the norm-specific pieces of a first-order attack, used by the training attacks
    (``fastrobust.methods``) and by evaluation alike."""

    name: str                                                                      # "linf" or "l2"
    start: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]  # unprojected random delta
    direction: Callable[[torch.Tensor], torch.Tensor]  # gradient -> unit-norm ascent direction
    project: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (delta, x, eps) -> feasible delta

    def random_delta(self, x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """A feasible random start: :attr:`start` followed by :attr:`project`."""
        return self.project(self.start(x, eps, generator), x, eps)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, alpha: float, x: torch.Tensor, eps: float) -> torch.Tensor:
        """One ascent step of size ``alpha`` along ``grad``, projected back (may reuse ``delta`` and ``grad``'s
        memory: L-inf works in place, bit for bit ``project_linf(delta + alpha * sign(grad))``)."""
        if self.name == "linf":
            return delta.add_(grad.sign_(), alpha=alpha).clamp_(-eps, eps).clamp_(-x, 1 - x)
        return self.project(delta + alpha * self.direction(grad), x, eps)


THREAT_MODELS = {
    "linf": ThreatModel("linf", _linf_start, _linf_direction, project_linf),
    "l2": ThreatModel("l2", _l2_start, _l2_direction, project_l2),
}


def threat_model(norm: str) -> ThreatModel:
    """The :class:`ThreatModel` of ``norm`` (``"linf"`` or ``"l2"``), else :class:`ConfigError`."""
    if norm not in THREAT_MODELS:
        raise ConfigError(f"unknown norm {norm!r}; allowed: {', '.join(THREAT_MODELS)}")
    return THREAT_MODELS[norm]


def random_start(
    x: torch.Tensor, eps: float, norm: str = "linf", generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random perturbation in the ``norm`` ball of radius ``eps`` (uniform for ``"linf"``,
    uniform in the ball for ``"l2"``), projected so ``x + delta`` is in ``[0, 1]``."""
    return threat_model(norm).random_delta(x, eps, generator)
