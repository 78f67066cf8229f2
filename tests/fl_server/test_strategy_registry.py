"""The strategy registry: every entry builds from RunSettings and resists one attacker."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from fl_messages import SHAPE, server_identity, trained

import fl_server.registry as strategies
import protocol.settings
from experiments.config import check_data
from fl_server.mixin import FedPrivMixin
from fl_server.registry import STRATEGIES, make_strategy
from fl_server.weighted import WeightedFedAvg
from protocol.records import from_record, to_record
from protocol.settings import RunSettings

GLOBAL = 0.5
ATTACK = -8.0  # 8x the honest update norm: under the server's 10x norm screen, so the
# strategies themselves must resist it (a larger one is rejected before them, tested below)
BASELINES = ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"]
REPLIES = {"bulyan": 7}  # Flower's Bulyan needs n >= 4f + 3 replies (f = 1)


@pytest.fixture(autouse=True)
def _serverapp_identity():
    with server_identity():
        yield


def _settings(name: str, num_clients: int = 5, **kwargs) -> RunSettings:
    scorer = {"aggregation_scorer": "median_agreement"} if name == "scorer" else {}
    return RunSettings(
        num_clients=num_clients,
        aggregation_strategy=name,
        aggregation_num_malicious=1,
        **(scorer | kwargs),
    ).validate()


def _round(n: int, seed: int = 0) -> tuple[list, np.ndarray, int]:
    """``n - 1`` honest replies ``g + ~1`` and one attacker ``g - 100`` (its node id last)."""
    rng = np.random.default_rng(seed)
    honest = [GLOBAL + 1.0 + rng.normal(0.0, 0.05, SHAPE) for _ in range(n - 1)]
    replies = [
        trained(100 + i, 0.0, 100, weights={"w": w.astype(np.float32)})
        for i, w in enumerate(honest)
    ]
    attacker = 100 + n - 1
    replies.append(trained(attacker, GLOBAL + ATTACK, 100))
    return replies, np.stack(honest).astype(np.float32), attacker


def _ready(name: str, n: int):
    strategy = make_strategy(_settings(name, num_clients=n))
    strategy.current = to_record({"w": np.full(SHAPE, GLOBAL, dtype=np.float32)})
    return strategy


# ---------------------------------------------------------------------- registry
def test_registry_matches_the_names_settings_accept() -> None:
    assert set(STRATEGIES) == set(protocol.settings.STRATEGIES)


@pytest.mark.parametrize("name", sorted(protocol.settings.STRATEGIES))
def test_make_strategy_builds_every_registered_strategy(name: str) -> None:
    n = REPLIES.get(name, 5)  # Bulyan needs 4 * num_malicious + 3 clients a round
    settings = _settings(name, num_clients=n)
    strategy = make_strategy(settings)
    assert isinstance(strategy, FedPrivMixin)
    assert strategy.min_available_nodes == n
    assert strategy.fraction_train == settings.fraction_train
    assert strategy.rounds == {} and strategy.current is None
    if name in ("fedavg", "scorer"):
        assert isinstance(strategy, WeightedFedAvg)
    if name in ("krum", "multikrum", "bulyan"):
        assert strategy.num_malicious_nodes == 1


def test_baseline_parameters_come_from_settings() -> None:
    trimmed = make_strategy(_settings("fedtrimmedavg", aggregation_trim_beta=0.3))
    assert trimmed.beta == pytest.approx(0.3)
    multikrum = make_strategy(_settings("multikrum", num_clients=6))
    assert multikrum.num_nodes_to_select == 5


def test_unknown_strategy_is_rejected() -> None:
    settings = dataclasses.replace(RunSettings(), aggregation_strategy="fedmagic")
    with pytest.raises(ValueError, match="aggregation.strategy") as err:
        make_strategy(settings)
    assert "fedmagic" in str(err.value)
    with pytest.raises(ValueError, match="aggregation.strategy"):
        settings.validate()


def test_fltrust_without_server_data_is_rejected() -> None:
    settings = RunSettings(aggregation_strategy="scorer", aggregation_scorer="fltrust")
    with pytest.raises(ValueError, match="aggregation.server_data_size"):
        make_strategy(settings, None)
    strategy = make_strategy(settings, lambda rnd, g: {k: np.ones_like(v) for k, v in g.items()})
    assert strategy.server_update is not None


def test_fltrust_needs_server_data_in_the_config_check() -> None:
    settings = RunSettings(aggregation_strategy="scorer", aggregation_scorer="fltrust")
    with pytest.raises(ValueError, match="aggregation.server_data_size"):
        check_data(settings)
    with_data = check_data(dataclasses.replace(settings, aggregation_server_data_size=100))
    assert len(with_data.train_sizes) == settings.num_clients
    assert min(with_data.train_sizes) > 0
    # the server's root data comes out of the clients' pool
    plain = check_data(RunSettings())
    assert sum(with_data.train_sizes) < sum(plain.train_sizes)


# ---------------------------------------------------------------------- robustness
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_resists_one_attacker(name: str) -> None:
    n = REPLIES.get(name, 5)
    strategy = _ready(name, n)
    replies, honest, _ = _round(n)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None, f"{name} kept the previous model"
    w = from_record(arrays)["w"]
    assert w.shape == SHAPE and np.all(np.isfinite(w))
    honest_mean = honest.mean(axis=0)
    fedavg = (honest.sum(axis=0) + GLOBAL + ATTACK) / n  # equal example counts
    assert np.linalg.norm(w - honest_mean) < np.linalg.norm(fedavg - honest_mean)
    # every robust rule lands inside the honest clients' range, coordinate by coordinate
    assert np.all(w >= honest.min(axis=0) - 1e-6) and np.all(w <= honest.max(axis=0) + 1e-6)
    outcomes = strategy.rounds[1].outcomes
    assert [o.status for o in outcomes] == ["trained"] * n
    assert metrics["trained"] == n and not strategy.rounds[1].kept_previous_model


def test_plain_fedavg_is_dragged_by_the_attacker() -> None:
    """The contrast the baselines are measured against."""
    strategy = _ready("fedavg", 5)
    replies, honest, _ = _round(5)
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = (honest.sum(axis=0) + GLOBAL + ATTACK) / 5
    np.testing.assert_allclose(from_record(arrays)["w"], expected, rtol=1e-5)


def test_scorer_gives_the_attacker_the_lowest_weight() -> None:
    strategy = _ready("scorer", 5)
    replies, honest, attacker = _round(5)
    arrays, _ = strategy.aggregate_train(1, replies)
    w = from_record(arrays)["w"]
    assert np.all(np.isfinite(w))
    assert np.abs(w - honest.mean(axis=0)).max() < 0.1
    outcomes = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert all(o.status == "trained" for o in outcomes.values())
    bad = outcomes.pop(attacker)
    assert all(bad.weight < o.weight for o in outcomes.values())
    assert sum(o.weight for o in outcomes.values()) + bad.weight == pytest.approx(1.0)
    for o in [bad, *outcomes.values()]:
        assert math.isfinite(o.score) and math.isfinite(o.reputation)
    assert all(bad.score < o.score for o in outcomes.values())
    assert all(bad.reputation < o.reputation for o in outcomes.values())


@pytest.mark.parametrize("name", ["fedmedian", "krum"])
def test_baseline_keeps_the_global_dtype(name: str) -> None:
    strategy = _ready(name, 5)
    replies = [
        trained(100 + i, 0.0, 100, weights={"w": np.full(SHAPE, 1.0 + i, dtype=np.float64)})
        for i in range(5)
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["trained"] == 5
    assert from_record(arrays)["w"].dtype == np.float32


@pytest.mark.parametrize("name", ["fedavg", "scorer", "fedmedian"])
def test_extra_metric_key_does_not_stop_the_round(name: str) -> None:
    strategy = _ready(name, 5)
    replies, _, _ = _round(5)
    replies[0].content.metric_records["metrics"]["extra"] = 1.0
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics["trained"] == 5


@pytest.mark.parametrize("name", ["fedavg", "scorer", *BASELINES])
def test_an_update_far_above_the_median_norm_is_rejected_before_any_strategy(name) -> None:
    n = REPLIES.get(name, 4) + 1  # one more: the rejected update leaves the strategy n - 1
    strategy = _ready(name, n)
    replies, honest, attacker = _round(n)
    replies[-1] = trained(attacker, GLOBAL - 100.0, 100)  # 100x the honest norm
    arrays, metrics = strategy.aggregate_train(1, replies)
    outcomes = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert outcomes[attacker].status == "rejected"
    assert "update norm" in outcomes[attacker].reason
    assert metrics["trained"] == n - 1
    w = from_record(arrays)["w"]
    assert np.all(w >= honest.min(axis=0) - 1e-6) and np.all(w <= honest.max(axis=0) + 1e-6)


def test_registry_entries_are_factories_of_settings() -> None:
    """register_strategy adds a factory that make_strategy then uses."""
    calls: list[str] = []

    def factory(settings: RunSettings, server_update):
        calls.append(settings.aggregation_strategy)
        return "built"

    strategies.register_strategy("test-only")(factory)
    try:
        settings = dataclasses.replace(RunSettings(), aggregation_strategy="test-only")
        assert make_strategy(settings) == "built"
        assert calls == ["test-only"]
    finally:
        del STRATEGIES["test-only"]


def test_scorer_strategy_takes_exclusion_settings_from_the_config() -> None:
    settings = _settings(
        "scorer",
        aggregation_scorer="output_agreement",
        aggregation_relative_threshold=0.5,
        aggregation_by_reputation=False,
    )
    strategy = make_strategy(settings)
    assert isinstance(strategy, WeightedFedAvg)
    weighting = strategy.weighting
    assert weighting.relative_threshold == 0.5  # type: ignore[attr-defined]
    assert weighting.by_reputation is False  # type: ignore[attr-defined]
    assert weighting.scorer.name == "output_agreement"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"aggregation\.relative_threshold must be in \[0, 1\]"):
        dataclasses.replace(settings, aggregation_relative_threshold=1.5).validate()


@pytest.mark.parametrize(("group", "relative"), [("fltrust", 0.25), ("output_agreement", 0.5)])
def test_reliability_conf_group_sets_the_exclusion_rule(group, relative) -> None:
    from pathlib import Path

    import hydra

    from experiments.config import to_settings
    from experiments.schema import register_schema

    register_schema()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with hydra.initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra.compose("config", overrides=[f"aggregation={group}"])
    settings = to_settings(cfg)
    assert settings.aggregation_scorer == group
    assert settings.aggregation_relative_threshold == relative
    assert settings.aggregation_by_reputation is False
    assert settings.to_run_config()["aggregation-by-reputation"] is False
