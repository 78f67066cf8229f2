"""Every setting's one definition: its group, key, type, default and range check.

A run is configured by one group of settings per concern (``dataset``, ``model``,
``privacy``, ``federation``, ``aggregation``, ``participants``, ``central_dp``,
``personalization``) and three top-level keys
(``seed``, ``device``, ``resume``). Each group is a dataclass here; nothing else states a key,
a type or a default:

* ``experiments.schema`` registers :class:`FedPrivConf` (these dataclasses) as Hydra's
  structured config, so ``conf/<group>/*.yaml`` may only set keys that exist here, with values
  of the declared type;
* :class:`protocol.settings.RunSettings`, the flat run config the Flower apps read, takes each
  field's default from here (``_f("privacy.target_epsilon")``);
* ``pyproject.toml``'s ``[tool.flwr.app.config]`` is generated from ``RunSettings``
  (``python -m protocol.settings --pyproject``).

``tests/protocol/test_one_source.py`` checks all of them against these dataclasses. Keys marked
:func:`launch_only` (``federation.engine``, ``superlink``, ``root_certificates``,
``client_cpus``, ``client_gpus``) tell ``experiments`` how to start processes; they are not in
the flat run config. Each group's :meth:`Group.validate` checks what concerns that group only
and raises ``ValueError`` naming the setting and what it found; checks across groups are in
:meth:`protocol.settings.RunSettings.validate`.

No Hydra here: the Flower apps import ``protocol``.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import (
    CENTRAL_DP_MODES,
    FUNCTIONAL_AGGREGATIONS,
    FUNCTIONAL_BOUNDS,
    FUNCTIONAL_NOISES,
    GRAD_SAMPLE_MODES,
    LAUNCH_ONLY,
    MAX_SEED,
    MIN_ROUND_TIMEOUT,
    PERSONALIZATIONS,
    SENSOR_PIPELINES,
    STRATEGIES,
    TABLE_NORMALIZATIONS,
    TABLE_TASKS,
    Group,
    launch_only,
    show,
)
from .data import DatasetGroup, ModelGroup
from .training import (
    AggregationGroup,
    CentralDpGroup,
    FederationGroup,
    ParticipantsGroup,
    PersonalizationGroup,
    PrivacyGroup,
)


@dataclass
class FedPrivConf(Group):
    """The whole composed config (``conf/config.yaml``): the top-level keys and the groups."""

    seed: int = 0
    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda[:N]``."""
    resume: str = ""
    """A run directory: continue it from its last checkpoint."""
    dataset: DatasetGroup = field(default_factory=DatasetGroup)
    model: ModelGroup = field(default_factory=ModelGroup)
    privacy: PrivacyGroup = field(default_factory=PrivacyGroup)
    federation: FederationGroup = field(default_factory=FederationGroup)
    aggregation: AggregationGroup = field(default_factory=AggregationGroup)
    participants: ParticipantsGroup = field(default_factory=ParticipantsGroup)
    central_dp: CentralDpGroup = field(default_factory=CentralDpGroup)
    personalization: PersonalizationGroup = field(default_factory=PersonalizationGroup)

    def validate(self) -> None:
        """The top-level keys, then every group's own checks."""
        self._require("seed", 0 <= self.seed <= MAX_SEED, "must be in [0, 2**63 - 1]")
        self._require(
            "device",
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "must be 'auto', 'cpu' or 'cuda[:N]'",
        )
        for group in self.groups():
            group.validate()

    def groups(self) -> Iterator[Group]:
        """The groups, in the order of the fields."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Group):
                yield value


GROUPS: dict[str, Any] = {
    f.name: f.default_factory
    for f in dataclasses.fields(FedPrivConf)
    if f.default_factory is not dataclasses.MISSING
}
"""Group name -> its dataclass (a :class:`Group`), as :class:`FedPrivConf` nests them."""


def setting_field(key: str) -> dataclasses.Field[Any]:
    """The dataclass field of setting ``key`` (``privacy.delta``; ``seed`` for the top level).

    Raises
    ------
    KeyError
        Naming ``key`` when no group defines it.
    """
    group, _, name = key.rpartition(".")
    if not group:
        fields = [f for f in dataclasses.fields(FedPrivConf) if f.name not in GROUPS]
    elif group in GROUPS:
        fields = list(dataclasses.fields(GROUPS[group]))
    else:
        fields = []
    for f in fields:
        if f.name == name:
            return f
    raise KeyError(f"no setting {key!r} in protocol.groups")


def default_of(key: str) -> Any:
    """The default of setting ``key`` (``privacy.target_epsilon`` -> 4.0)."""
    return setting_field(key).default


def settings_keys(include_launch_only: bool = True) -> list[str]:
    """Every setting's key, top level first, then group by group."""
    keys = [f.name for f in dataclasses.fields(FedPrivConf) if f.name not in GROUPS]
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            if include_launch_only or not f.metadata.get(LAUNCH_ONLY, False):
                keys.append(f"{group}.{f.name}")
    return keys


def from_values(values: Mapping[str, Any]) -> FedPrivConf:
    """A :class:`FedPrivConf` from ``{key: value}``; keys not given keep their defaults."""
    by_group: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    top: dict[str, Any] = {}
    for key, value in values.items():
        setting_field(key)  # a KeyError for a key no group defines
        group, _, name = key.rpartition(".")
        (by_group[group] if group else top)[name] = value
    groups: dict[str, Any] = {group: GROUPS[group](**kw) for group, kw in by_group.items()}
    return FedPrivConf(**top, **groups)


# ---------------------------------------------------------------------- deprecated names
RENAMED_GROUPS: dict[str, str] = {"reliability": "aggregation"}
"""Old group -> new group: the Hydra group (``reliability=krum``), its keys
(``reliability.scorer``), run-config keys (``reliability-scorer``)."""

RENAMED_VALUES: dict[str, dict[str, str]] = {"model.name": {"logreg": "softmax"}}
"""Setting -> {old value: new value}; the group option of the same name (``model=logreg``)
is renamed with it."""


class DeprecatedSettingWarning(FutureWarning):
    """A deprecated setting name was used (a ``FutureWarning``: Python shows it to end users)."""


def deprecated(old: str, new: str) -> None:
    """Warn that ``old`` is deprecated and name ``new``."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecatedSettingWarning, stacklevel=3)


__all__ = [
    "AggregationGroup",
    "CENTRAL_DP_MODES",
    "CentralDpGroup",
    "DatasetGroup",
    "DeprecatedSettingWarning",
    "FUNCTIONAL_AGGREGATIONS",
    "FUNCTIONAL_BOUNDS",
    "FUNCTIONAL_NOISES",
    "FedPrivConf",
    "FederationGroup",
    "GRAD_SAMPLE_MODES",
    "GROUPS",
    "Group",
    "LAUNCH_ONLY",
    "MAX_SEED",
    "MIN_ROUND_TIMEOUT",
    "ModelGroup",
    "PERSONALIZATIONS",
    "ParticipantsGroup",
    "PersonalizationGroup",
    "PrivacyGroup",
    "RENAMED_GROUPS",
    "RENAMED_VALUES",
    "SENSOR_PIPELINES",
    "STRATEGIES",
    "TABLE_NORMALIZATIONS",
    "TABLE_TASKS",
    "default_of",
    "deprecated",
    "from_values",
    "launch_only",
    "setting_field",
    "settings_keys",
    "show",
]
