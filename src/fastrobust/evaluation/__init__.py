"""Robustness evaluation: clean, FGSM, PGD/CW, AutoAttack and Square accuracy, the per-example
worst case over all of them, and checks against gradient masking.

>>> from fastrobust.evaluation import evaluate, evaluate_checkpoint
>>> evaluate(model, x, y, attacks="clean,pgd20,aa", eps=8 / 255)      # any nn.Module on [0,1] images
>>> evaluate_checkpoint("runs/pgd", attacks="clean,pgd20,cw20,aa")    # writes runs/pgd/eval.json

The small clean/PGD evaluation that training runs each epoch is the engine's
(:mod:`fastrobust.engine.validation`).
"""

from .checks import DETERMINISM_TOLERANCE, GAP_THRESHOLD, PROBE_SIZE, SQUARE_TOLERANCE, STEPS_TOLERANCE
from .core import PROTOCOL, BrokenModelWarning, GradientMaskingWarning, adversarial_examples, evaluate
from .runs import evaluate_checkpoint, format_report, output_path
from .specs import VALID_NAMES, AttackSpec, parse_attacks, run_order, spec_of

__all__ = [
    "DETERMINISM_TOLERANCE", "GAP_THRESHOLD", "PROBE_SIZE", "PROTOCOL", "SQUARE_TOLERANCE", "STEPS_TOLERANCE",
    "VALID_NAMES", "AttackSpec", "BrokenModelWarning", "GradientMaskingWarning", "adversarial_examples", "evaluate",
    "evaluate_checkpoint", "format_report", "output_path", "parse_attacks", "run_order", "spec_of",
]
