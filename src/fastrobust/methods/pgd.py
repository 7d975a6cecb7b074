"""PGD-K adversarial training (Madry et al. 2018)."""

from __future__ import annotations

from ..attacks import pgd
from ..config import recipe_step
from ..errors import ConfigError
from .base import Batch, Method, Param, StepOutput, cross_entropy, register_method


@register_method
class PGDAT(Method):
    name = "pgd"
    description = "PGD-K adversarial training (Madry et al. 2018): K attack steps from a random start, then one weight step. Cost K+1."
    params = (
        Param("steps", int, 10, "K, the number of PGD steps of the inner attack", minimum=1),
        Param("attack_eval", bool, False, "generate the attack with the model in eval mode (BatchNorm frozen) instead of train mode"),
    )

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        return recipe_step(eps, params["steps"], recipe_ratio)

    @classmethod
    def check_config(cls, eps, alpha, params):
        if alpha > eps:
            raise ConfigError(f"method pgd: alpha ({alpha:.4g}) must not exceed eps ({eps:.4g}); a usual choice is eps/4 (CIFAR 2/255 at 8/255)")

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x_adv = pgd(model, batch.x, batch.y, batch.eps, steps=self.steps, alpha=batch.alpha, eval_mode=self.attack_eval)
        logits = model(x_adv)
        loss = cross_entropy(logits, batch.y)
        step(loss)
        return StepOutput(loss.detach(), logits.detach(), passes=float(len(batch.y) * (self.steps + 1)))
