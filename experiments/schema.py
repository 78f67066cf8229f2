"""Structured-config schema for ``conf/``: the setting groups of :mod:`protocol.groups`.

Hydra merges the YAML groups into those dataclasses, so a misspelt key or a value of the wrong
type fails at composition; value ranges are checked by
:meth:`protocol.settings.RunSettings.validate` (each group's ``validate`` and the checks across
groups) and :func:`experiments.config.check_data`. Keys, types and defaults are declared only
in :mod:`protocol.groups`.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from protocol.groups import (
    AggregationGroup,
    DatasetGroup,
    FederationGroup,
    FedPrivConf,
    ModelGroup,
    ParticipantsGroup,
    PrivacyGroup,
)

__all__ = [
    "SCHEMA_NAME",
    "AggregationGroup",
    "DatasetGroup",
    "FedPrivConf",
    "FederationGroup",
    "ModelGroup",
    "ParticipantsGroup",
    "PrivacyGroup",
    "register_schema",
]

SCHEMA_NAME = "fedpriv_schema"
"""The schema's name in Hydra's config store (first in ``conf/config.yaml``'s defaults list)."""


def register_schema() -> None:
    """Register :class:`protocol.groups.FedPrivConf` as ``fedpriv_schema``."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=FedPrivConf)
