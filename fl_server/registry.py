"""Strategy registry (``aggregation.strategy``): our weighted FedAvg and Flower's robust baselines.

Every entry gets the same sampling, validation and outcome records (:class:`FedPrivMixin`);
the baselines keep Flower's own aggregation rule (FedMedian, FedTrimmedAvg, Krum, MultiKrum,
Bulyan), so a comparison differs only in how updates are combined.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from privacy import get_mode
from protocol import keys
from protocol.settings import RunSettings
from reliability import ReliabilityWeighting, make_scorer

from .mixin import FedPrivMixin
from .objective import ObjectiveFedAvg, model_head_kind, noise_scale_of
from .replies import Weights
from .weighted import WeightedFedAvg, weight_by_examples

ServerUpdate = Callable[[int, Weights], Weights | None]
Factory = Callable[[RunSettings, ServerUpdate | None], Strategy]
STRATEGIES: dict[str, Factory] = {}


def register_strategy(name: str) -> Callable[[Factory], Factory]:
    """Register a strategy factory under ``name``."""

    def deco(fn: Factory) -> Factory:
        STRATEGIES[name] = fn
        return fn

    return deco


def make_strategy(settings: RunSettings, server_update: ServerUpdate | None = None) -> Strategy:
    """The strategy ``settings.aggregation_strategy`` names, ready for ``start``."""
    name = settings.aggregation_strategy
    if name not in STRATEGIES:
        raise ValueError(f"aggregation.strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name](settings, server_update)


def _objective(settings: RunSettings) -> Callable[..., WeightedFedAvg]:
    return functools.partial(
        ObjectiveFedAvg, noise_scale=noise_scale_of(settings), kind=model_head_kind(settings)
    )


RELEASES: dict[str, Callable[[RunSettings], Callable[..., WeightedFedAvg]]] = {
    "weights": lambda settings: WeightedFedAvg,
    "objective": _objective,
}
"""How the weighted strategies combine each kind of release (:data:`privacy.modes.RELEASES`):
trained weights by :class:`WeightedFedAvg`; the functional mechanism's noisy objectives by
:class:`ObjectiveFedAvg` (the server sums them and minimises once, with the same weighting)."""


def _weighted(settings: RunSettings) -> Callable[..., WeightedFedAvg]:
    """The weighted-FedAvg class for what the run's privacy mode releases (``release``)."""
    return RELEASES[get_mode(settings.privacy_mode).release(settings)](settings)


def _common(settings: RunSettings) -> dict[str, Any]:
    return {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_available_nodes": settings.num_clients,
    }


@register_strategy("fedavg")
def _fedavg(settings: RunSettings, _: ServerUpdate | None) -> Strategy:
    return _weighted(settings)(
        **_common(settings),
        seed=settings.seed,
        weighting=weight_by_examples,
        node_wait_timeout=settings.round_timeout,
        min_replies=settings.min_replies,
    )


@register_strategy("scorer")
def _scorer(settings: RunSettings, server_update: ServerUpdate | None) -> Strategy:
    scorer = make_scorer(settings.aggregation_scorer)
    if scorer.needs_server_data and server_update is None:
        raise ValueError(
            f"aggregation.scorer={settings.aggregation_scorer!r} needs server data "
            f"(aggregation.server_data_size > 0), got {settings.aggregation_server_data_size}"
        )
    weighting = ReliabilityWeighting(
        scorer,
        decay=settings.aggregation_decay,
        threshold=settings.aggregation_threshold,
        relative_threshold=settings.aggregation_relative_threshold,
        by_reputation=settings.aggregation_by_reputation,
    )
    return _weighted(settings)(
        **_common(settings),
        seed=settings.seed,
        weighting=weighting,
        server_update=server_update if scorer.needs_server_data else None,
        node_wait_timeout=settings.round_timeout,
        min_replies=settings.min_replies,
    )


def _baseline(base: type[FedAvg], **extra: Callable[[RunSettings], Any]) -> Factory:
    cls = type(f"FedPriv{base.__name__}", (FedPrivMixin, base), {})

    def factory(settings: RunSettings, _: ServerUpdate | None) -> Strategy:
        c = _common(settings)
        strategy = cls(
            fraction_train=c["fraction_train"],
            fraction_evaluate=c["fraction_evaluate"],
            min_train_nodes=1,
            min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
            min_available_nodes=c["min_available_nodes"],
            weighted_by_key=keys.NUM_EXAMPLES,
            arrayrecord_key=keys.ARRAYS,
            configrecord_key=keys.CONFIG,
            **{k: fn(settings) for k, fn in extra.items()},
        )
        strategy.setup_fedpriv(settings.seed, settings.round_timeout, settings.min_replies)
        return strategy

    return factory


def _malicious(s: RunSettings) -> int:
    return s.aggregation_num_malicious


register_strategy("fedmedian")(_baseline(FedMedian))
register_strategy("fedtrimmedavg")(_baseline(FedTrimmedAvg, beta=lambda s: s.aggregation_trim_beta))
register_strategy("krum")(_baseline(Krum, num_malicious_nodes=_malicious))
register_strategy("multikrum")(
    _baseline(
        MultiKrum,
        num_malicious_nodes=_malicious,
        num_nodes_to_select=lambda s: max(1, s.num_clients - s.aggregation_num_malicious),
    )
)
register_strategy("bulyan")(_baseline(Bulyan, num_malicious_nodes=_malicious))
