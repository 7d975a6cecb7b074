"""Free adversarial training (Shafahi et al. 2019): batch replay with a carried perturbation.

:func:`replay` and :class:`CarriedDelta` are also the machinery of DEAT (``deat.py``).
"""

from __future__ import annotations

import torch

from .base import Batch, Method, Param, StepOutput, cross_entropy, register_method


def replay_step(delta: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float) -> torch.Tensor:
    """One signed ascent step on ``delta``, projected to the eps-ball and so that x+delta stays in [0,1]."""
    delta = delta + step_size * grad.sign()
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


def replay(model, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, replays: int, alpha: float, eps: float,
           step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replay the minibatch ``replays`` times from the feasible ``delta``.

    Each replay is one forward/backward of the mean CE on ``x + delta``: ``step``
    takes the weight step and returns the input gradient of the same backward,
    and ``delta <- replay_step(delta, grad)``. Returns the new ``delta`` and the
    last replay's detached loss, detached logits and input gradient.
    """
    for _ in range(replays):
        delta.requires_grad_(True)
        logits = model(x + delta)
        loss = cross_entropy(logits, y)
        grad = step(loss, wrt=delta)
        delta = replay_step(delta.detach(), x, grad, alpha, eps)
    return delta, loss.detach(), logits.detach(), grad


class CarriedDelta:
    """Mixin (before :class:`Method`): a perturbation carried across minibatches and epochs.

    It starts at zero; row i of a minibatch continues from row i of the last one
    (Free-AT). A larger batch than any before is padded with zeros. Saved by
    ``state_dict`` so that resuming is exact.
    """

    delta: torch.Tensor | None = None

    def carried_delta(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The carried perturbation for ``x``, made feasible for the current ``eps``."""
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        n = len(x)
        if self.delta.shape[0] < n:   # a larger batch than before: pad with zeros
            pad = torch.zeros((n - self.delta.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.delta = torch.cat([self.delta, pad])
        return ((x + self.delta[:n]).clamp(0, 1) - x).clamp(-eps, eps)

    def carry(self, delta: torch.Tensor) -> None:
        """Keep ``delta`` (of the minibatch just trained) for the next minibatch."""
        self.delta[:len(delta)] = delta.detach()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "delta": None if self.delta is None else self.delta.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.delta = state.get("delta")


@register_method
class Free(CarriedDelta, Method):
    name = "free"
    description = (
        "Free-m (Shafahi et al. 2019): each minibatch is replayed m times; every replay is one forward/backward "
        "giving both the weight step and the delta step; delta is carried across minibatches. Cost m per epoch "
        "(the original divides the epoch count by m: pass --epochs accordingly)."
    )
    params = (Param("replays", int, 4, "m, the number of replays of each minibatch", minimum=1),)

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        delta = self.carried_delta(batch.x, batch.eps)
        delta, loss, logits, _ = replay(model, batch.x, batch.y, delta, self.replays, batch.alpha, batch.eps, step)
        self.carry(delta)
        return StepOutput(loss, logits, passes=float(len(batch.y) * self.replays))
