"""Natural (standard, non-adversarial) training."""

from __future__ import annotations

from .base import Batch, Method, StepOutput, cross_entropy, register_method


@register_method
class Natural(Method):
    name = "natural"
    description = "Standard training on clean images (no attack); the cost and robustness floor."
    uses_alpha = False
    selects_by = "clean"    # a model never trained against attacks: keep its most accurate epoch

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        logits = model(batch.x)
        loss = cross_entropy(logits, batch.y)
        step(loss)
        return StepOutput(loss.detach(), logits.detach(), passes=float(len(batch.y)))
