"""The ``audit`` settings of ``python -m experiments.audit``: one definition, checked once.

``audit.*`` is read by ``experiments.audit`` only (it never reaches the Flower apps, so it is
not in :class:`protocol.settings.RunSettings` or ``pyproject.toml``); its keys, types,
defaults and checks are declared here, in :class:`AuditGroup`. The entry point takes the
``audit.*`` overrides off the command line and merges them into this dataclass with OmegaConf
(a misspelt key or a wrong type fails there); the rest composes ``conf/config.yaml`` as
``experiments.run`` does. (A Hydra group would need ``audit`` in the run's schema,
:class:`protocol.groups.FedPrivConf`, which every run and the Flower apps' settings share.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from privacy.audit import MIN_CANARIES
from protocol.groups import Group
from tasks.audit import ATTACKS
from tasks.audit.attacks import ATTACK_CANARIES
from tasks.audit.canaries import CANARY_KINDS

DEFAULT_ATTACKS: dict[str, tuple[str, ...]] = {
    "input": ("blackbox", "whitebox"),
    "gradient": ("whitebox_gradient",),
}
"""``audit.attacks`` when left empty, per ``audit.canary_kind``."""


@dataclass
class AuditGroup(Group):
    """``audit.*``: the canaries, the attacks and the confidence of the bound.

    ``canaries``: records hidden in client ``client``'s data, each by a secret fair coin
    (``tasks.audit.canaries``). ``attacks``: names in :data:`tasks.audit.ATTACKS`; ``replay`` and
    ``replay_objective`` need ``privacy.reproducible_noise=true`` (the auditor knows the seed);
    ``replay_objective`` and ``whitebox_objective`` a functional release of objectives.
    ``canary_kind``: ``input`` (crafted mislabelled records) or ``gradient`` (Dirac gradient
    canaries in the audited client's DP-SGD, :mod:`tasks.audit.gradient`; attack
    ``whitebox_gradient``); every attack must score that kind
    (:data:`tasks.audit.attacks.ATTACK_CANARIES`). Empty ``attacks``: the kind's defaults
    (:data:`DEFAULT_ATTACKS`).
    ``allow_deployment``: an audit of ``federation.engine=deployment`` is refused unless true.
    """

    NAME: ClassVar[str] = "audit"

    canaries: int = 1000
    confidence: float = 0.95
    client: int = 0
    attacks: list[str] = field(default_factory=list)
    allow_deployment: bool = False
    canary_kind: str = "input"

    def __post_init__(self) -> None:
        if not self.attacks and self.canary_kind in DEFAULT_ATTACKS:
            self.attacks = list(DEFAULT_ATTACKS[self.canary_kind])

    def validate(self) -> None:
        """``canaries`` >= 100, ``confidence`` in (0, 1), known attacks, ``client`` >= 0."""
        self._require("canaries", self.canaries >= MIN_CANARIES, f"must be >= {MIN_CANARIES}")
        self._require(
            "confidence",
            math.isfinite(self.confidence) and 0 < self.confidence < 1,
            "must be in (0, 1)",
        )
        self._require("client", self.client >= 0, "must be >= 0")
        self._one_of("canary_kind", tuple(CANARY_KINDS))
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(
                f"audit.attacks must be a non-empty list of {sorted(ATTACKS)}, got "
                f"{list(self.attacks)!r}"
            )
        other = [a for a in self.attacks if ATTACK_CANARIES[a] != self.canary_kind]
        if other:
            fits = sorted(a for a, k in ATTACK_CANARIES.items() if k == self.canary_kind)
            raise ValueError(
                f"audit.attacks {other} score other canaries than audit.canary_kind="
                f"{self.canary_kind!r} (its attacks: {fits})"
            )


def parse_audit(overrides: list[str]) -> AuditGroup:
    """``audit.KEY=VALUE`` overrides merged into :class:`AuditGroup`, then validated.

    ``ValueError`` names the key: unknown, of the wrong type, or out of range.
    """
    base = OmegaConf.structured(AuditGroup)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ValueError(f"audit: {err.msg}".split("\n")[0]) from None
    group = AuditGroup(**OmegaConf.to_container(merged))  # type: ignore[arg-type]
    group.validate()
    return group
