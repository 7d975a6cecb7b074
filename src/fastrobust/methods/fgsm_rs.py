"""FGSM with random start: "Fast is better than free" (Wong, Rice and Kolter 2020)."""

from __future__ import annotations

from ..attacks import fgsm
from .base import Batch, Method, StepOutput, cross_entropy, register_method


@register_method
class FGSMRS(Method):
    name = "fgsm-rs"
    description = "Fast-AT (Wong et al. 2020): one FGSM step of size alpha (default 1.25 eps) from a uniform random start. Cost 2."

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        return 1.25 * eps

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x_adv = fgsm(model, batch.x, batch.y, batch.eps, alpha=batch.alpha, random_start=True, eval_mode=False)
        logits = model(x_adv)
        loss = cross_entropy(logits, batch.y)
        step(loss)
        return StepOutput(loss.detach(), logits.detach(), passes=float(2 * len(batch.y)))
