"""Attack names: parsing ``"clean,pgd20,aa"`` into attack specifications and their run order.

Names (case-insensitive):

- ``clean``: no attack.
- ``fgsm``: one signed-gradient step of size eps from the clean image (CE loss).
- ``pgd{K}`` / ``pgd{K}x{R}``: PGD-K on the cross-entropy loss, random start, R restarts
  (``pgd20``, ``pgd100``, ``pgd50x10``).
- ``cw{K}`` / ``cw{K}x{R}``: the same on the Carlini-Wagner margin loss (``cw20``).
- ``aa``: AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), through ``pyautoattack``.
- ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``: one AutoAttack component with its standard settings.
- ``square`` / ``square{Q}``: the black-box Square attack with 5000 (or Q) queries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

#: AutoAttack's standard components, in its run order.
AA_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
#: Single AutoAttack components accepted as attack names (run in this order).
AA_SINGLE = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t")
SQUARE_QUERIES = 5000
MAX_STEPS, MAX_RESTARTS, MAX_QUERIES = 100_000, 1000, 1_000_000

VALID_NAMES = (
    "clean, fgsm, pgd{K} (e.g. pgd20, pgd100), pgd{K}x{R} (K steps, R restarts, e.g. pgd50x10), "
    "cw{K}, cw{K}x{R} (CW margin loss, e.g. cw20), aa (AutoAttack standard), "
    f"{', '.join(AA_SINGLE)} (one AutoAttack component), square, square{{Q}} (Q queries, e.g. square1000)"
)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation.

    ``kind`` is ``"clean"``, ``"pgd"`` (our PGD/FGSM on ``loss``) or ``"autoattack"``
    (the ``components`` of pyautoattack, run one after the other).
    """

    name: str
    kind: str
    loss: str = "ce"
    steps: int = 0
    restarts: int = 1
    random_start: bool = True
    components: tuple[str, ...] = ()
    queries: int = SQUARE_QUERIES

    @property
    def white_box(self) -> bool:
        """Uses the model's gradients (everything except Square)."""
        return self.kind == "pgd" or (self.kind == "autoattack" and self.components != ("square",))

    @property
    def label(self) -> str:
        """A human name: PGD-20 CE, PGD-50 CE x 10 restarts, CW-20, FGSM, AutoAttack, Square."""
        if self.name == "fgsm":
            return "FGSM"
        if self.kind == "pgd":
            base = f"PGD-{self.steps} CE" if self.loss == "ce" else f"CW-{self.steps}"
            return base + (f" x {self.restarts} restarts" if self.restarts > 1 else "")
        if self.name == "aa":
            return "AutoAttack (standard)"
        if self.components == ("square",):
            return f"Square ({self.queries} queries)"
        return self.name.upper()

    def rank(self) -> tuple:
        """Position in the run order: clean, our white-box attacks by cost, AutoAttack
        components, AutoAttack, then the black-box Square last (so it can expose masking)."""
        if self.kind == "clean":
            return (0,)
        if self.kind == "pgd":
            return (1, self.steps * self.restarts, self.random_start, self.loss, self.restarts)
        if self.components == ("square",):
            return (4, self.queries)
        if self.name == "aa":
            return (3,)
        return (2, AA_SINGLE.index(self.name))


_PGD = re.compile(r"(pgd|cw)(\d+)(?:x(\d+))?")
_SQUARE = re.compile(r"square(\d+)?")


def spec_of(name: str) -> AttackSpec:
    """The :class:`AttackSpec` of one attack name, else :class:`ConfigError` listing the valid names."""
    key = str(name).strip().lower()
    if key == "clean":
        return AttackSpec("clean", "clean")
    if key == "fgsm":
        return AttackSpec("fgsm", "pgd", steps=1, random_start=False)
    if key == "aa":
        return AttackSpec("aa", "autoattack", components=AA_STANDARD)
    if key in AA_SINGLE:
        return AttackSpec(key, "autoattack", components=(key,))
    m = _PGD.fullmatch(key)
    if m:
        family, steps, restarts = m.group(1), int(m.group(2)), int(m.group(3) or 1)
        if not 1 <= steps <= MAX_STEPS or not 1 <= restarts <= MAX_RESTARTS:
            raise ConfigError(f"attack {name!r}: steps must be 1..{MAX_STEPS} and restarts 1..{MAX_RESTARTS}")
        canonical = f"{family}{steps}" + (f"x{restarts}" if restarts > 1 else "")
        return AttackSpec(canonical, "pgd", loss="ce" if family == "pgd" else "cw", steps=steps, restarts=restarts)
    m = _SQUARE.fullmatch(key)
    if m:
        queries = int(m.group(1) or SQUARE_QUERIES)
        if not 1 <= queries <= MAX_QUERIES:
            raise ConfigError(f"attack {name!r}: the number of queries must be 1..{MAX_QUERIES}")
        return AttackSpec("square" if queries == SQUARE_QUERIES else f"square{queries}", "autoattack",
                          components=("square",), queries=queries)
    raise ConfigError(f"unknown attack {name!r}; valid attacks: {VALID_NAMES}")


def parse_attacks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Canonical attack names from ``"clean,pgd20,aa"`` or a list of names, in the given
    order, duplicates removed. An unknown or empty name raises :class:`ConfigError`."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str) or not part.strip():
            raise ConfigError(f"empty attack name in {spec!r}; write e.g. clean,pgd20,aa (valid attacks: {VALID_NAMES})")
        name = spec_of(part).name
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError(f"no attack given; valid attacks: {VALID_NAMES}")
    return names


def run_order(names: list[str]) -> list[AttackSpec]:
    """The specs of ``names`` in the order they run (see :meth:`AttackSpec.rank`)."""
    return sorted((spec_of(n) for n in names), key=AttackSpec.rank)


def attack_label(name: str) -> str:
    """``pgd50x10`` -> ``PGD-50x10``, ``cw20`` -> ``CW-20``, ``aa`` -> ``AutoAttack``."""
    m = re.fullmatch(r"([a-z]+?)(\d+)(?:x(\d+))?", name)
    if name == "aa":
        return "AutoAttack"
    if m:
        return f"{m.group(1).upper()}-{m.group(2)}" + (f"x{m.group(3)}" if m.group(3) else "")
    return name.replace("_", "-").capitalize() if name.islower() and len(name) > 4 else name.upper()
