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


@dataclass
class AuditGroup(Group):
    """``audit.*``: the canaries, the attacks and the confidence of the bound.

    ``canaries``: records hidden in client ``client``'s data, each by a secret fair coin
    (``tasks.audit.canaries``). ``attacks``: names in :data:`tasks.audit.ATTACKS`; ``replay``
    needs ``privacy.reproducible_noise=true`` (the auditor knows the seed).
    ``allow_deployment``: an audit of ``federation.engine=deployment`` is refused unless true.
    """

    NAME: ClassVar[str] = "audit"

    canaries: int = 1000
    confidence: float = 0.95
    client: int = 0
    attacks: list[str] = field(default_factory=lambda: ["blackbox", "whitebox"])
    allow_deployment: bool = False

    def validate(self) -> None:
        """``canaries`` >= 100, ``confidence`` in (0, 1), known attacks, ``client`` >= 0."""
        self._require("canaries", self.canaries >= MIN_CANARIES, f"must be >= {MIN_CANARIES}")
        self._require(
            "confidence",
            math.isfinite(self.confidence) and 0 < self.confidence < 1,
            "must be in (0, 1)",
        )
        self._require("client", self.client >= 0, "must be >= 0")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(
                f"audit.attacks must be a non-empty list of {sorted(ATTACKS)}, got "
                f"{list(self.attacks)!r}"
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
