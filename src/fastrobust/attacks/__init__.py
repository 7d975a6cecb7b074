"""White-box attacks in pixel space (inputs in ``[0, 1]``) and robust accuracy.

>>> x_adv = pgd(model, x, y, eps=8 / 255, steps=10)
>>> robust_accuracy(model, x, y, functools.partial(pgd, eps=8 / 255))
"""

from fastrobust.attacks.evaluate import Attack, robust_accuracy
from fastrobust.attacks.losses import LOSSES, attack_loss, margin_loss
from fastrobust.attacks.mode import preserved_mode
from fastrobust.attacks.pgd import fgsm, pgd
from fastrobust.attacks.projection import THREAT_MODELS, ThreatModel, project_l2, project_linf, random_start, threat_model

__all__ = [
    "LOSSES", "THREAT_MODELS", "Attack", "ThreatModel", "threat_model", "attack_loss", "fgsm", "margin_loss", "pgd", "preserved_mode",
    "project_l2", "project_linf", "random_start", "robust_accuracy",
]
