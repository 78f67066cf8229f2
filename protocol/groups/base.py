"""The values the settings may take, and :class:`Group`, the base of every setting group."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, ClassVar

LAUNCH_ONLY = "launch_only"
"""Field-metadata flag of a key that ``experiments`` uses to start processes (not sent to the
Flower apps, so not in :class:`protocol.settings.RunSettings`)."""

GRAD_SAMPLE_MODES = ("auto", "ew", "hooks", "functorch", "ghost")
"""Opacus per-sample-gradient modes (``privacy.grad_sample_mode``): ``auto`` (the model's
measured fastest, :attr:`tasks.models.registry.ModelInfo.grad_sample_mode`) and the exact modes
``privacy.dpsgd.GRAD_SAMPLE_MODES``, which a test keeps equal to the rest of this tuple."""

FUNCTIONAL_BOUNDS = ("l2", "paper")
"""Sensitivity bounds of the functional mechanism (``privacy.functional_bound``); a test keeps
this tuple and ``privacy.functional.SENSITIVITY_BOUNDS`` equal."""

FUNCTIONAL_NOISES = ("laplace", "gaussian")
"""Noise of the functional mechanism (``privacy.functional_noise``): ``laplace`` (pure epsilon-DP)
or ``gaussian`` ((epsilon, delta)); a test keeps this tuple and
``privacy.functional.FUNCTIONAL_NOISES`` equal."""

FUNCTIONAL_AGGREGATIONS = ("objective", "average")
"""How the server combines functional-mechanism clients (``privacy.functional_aggregation``):
``objective`` sums the clients' released noisy objectives and minimises the sum once;
``average`` averages the clients' own minimisers (FedAvg)."""

STRATEGIES = ("fedavg", "scorer", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Names the ServerApp's strategy registry serves (``aggregation.strategy``); a test keeps the
registry in ``fl_server.registry`` and this tuple equal, so configs are checked up front."""

CENTRAL_DP_MODES = ("none", "fixed", "adaptive")
"""Client-level DP on the server (``central_dp.mode``); a test keeps this tuple and
``privacy.central.CLIPPINGS`` (plus ``none``) equal."""

TABLE_TASKS = ("classification", "regression")
"""``dataset.task`` of a user's table."""

TABLE_NORMALIZATIONS = ("bounds", "client", "none")
"""``dataset.normalization`` of a user's table: declared public bounds, each client's own
statistics (kept local), or none; pooled statistics are never an option."""

SENSOR_PIPELINES = ("stats", "windows")
"""``dataset.pipeline`` of the sensor datasets (``watch``, ``hapt``): raw windows, or per-window
statistics standardised with each client's own training statistics (kept local); a test keeps
this tuple and ``tasks.data.features.PIPELINES`` equal."""

PERSONALIZATIONS = ("none", "finetune", "last_layer")
"""``personalization.mode``: after the federation each client fine-tunes the final global model
on its own training data (every layer, or the last layer only); the personal model never
leaves the client."""

MIN_ROUND_TIMEOUT = 10.0
"""Seconds: Flower's grid polls for replies every 3 s and a SuperNode every 3 s, so a shorter
round timeout fails every round."""

MAX_SEED = 2**63 - 1


def launch_only(default: Any) -> Any:
    """A field ``experiments`` reads to start processes; not part of the flat run config."""
    return field(default=default, metadata={LAUNCH_ONLY: True})


def show(value: Any) -> str:
    """A value as a user would have typed it: ``-1`` not ``-1.0``, strings quoted."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


class Group:
    """Base of the setting groups: the key of a field and the wording of a failed check."""

    NAME: ClassVar[str] = ""
    """The group's key in the composed config (``privacy``); empty for the top level."""

    @classmethod
    def key(cls, name: str) -> str:
        """Hydra key of field ``name`` (``privacy.delta``)."""
        return f"{cls.NAME}.{name}" if cls.NAME else name

    def validate(self) -> None:
        """Check this group's values; ``ValueError`` names the key and the value found."""

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{self.key(name)} {what}, got {show(getattr(self, name))}")

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            self._require(name, math.isfinite(value) and value > 0, "must be > 0")

    def _one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        self._require(name, getattr(self, name) in allowed, f"must be one of {list(allowed)}")
