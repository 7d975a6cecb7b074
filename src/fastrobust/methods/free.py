"""Free adversarial training (Shafahi et al. 2019): batch replay with a carried perturbation."""

from __future__ import annotations

import torch

from .base import Batch, Method, Param, StepOutput, cross_entropy, register_method


def replay_step(delta: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float) -> torch.Tensor:
    """One signed ascent step on ``delta``, projected to the eps-ball and so that x+delta stays in [0,1]."""
    delta = delta + step_size * grad.sign()
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


@register_method
class Free(Method):
    name = "free"
    description = (
        "Free-m (Shafahi et al. 2019): each minibatch is replayed m times; every replay is one forward/backward "
        "giving both the weight step and the delta step; delta is carried across minibatches. Cost m per epoch "
        "(the original divides the epoch count by m: pass --epochs accordingly)."
    )
    params = (Param("replays", int, 4, "m, the number of replays of each minibatch", minimum=1),)

    def __init__(self, ctx, **params):
        super().__init__(ctx, **params)
        self.delta: torch.Tensor | None = None

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y = batch.x, batch.y
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        n = len(y)
        if self.delta.shape[0] < n:   # a larger batch than before: pad with zeros
            pad = torch.zeros((n - self.delta.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.delta = torch.cat([self.delta, pad])
        delta = ((x + self.delta[:n]).clamp(0, 1) - x).clamp(-batch.eps, batch.eps)
        for _ in range(self.replays):
            delta.requires_grad_(True)
            logits = model(x + delta)
            loss = cross_entropy(logits, y)
            grad = step(loss, wrt=delta)
            delta = replay_step(delta.detach(), x, grad, batch.alpha, batch.eps)
        self.delta[:n] = delta
        return StepOutput(loss.detach(), logits.detach(), passes=float(n * self.replays))

    def state_dict(self) -> dict:
        return {"delta": None if self.delta is None else self.delta.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.delta = state.get("delta")
