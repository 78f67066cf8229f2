"""Under central_dp: Poisson sampling, uniform clipped weights, guard, ledger, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from fl_messages import SHAPE, server_identity, trained
from flwr.app import ConfigRecord

from fl_server.central import CentralDp
from fl_server.registry import make_strategy
from fl_server.weighted import WeightedFedAvg
from privacy.central import SERVER_LEDGER
from protocol.checkpoint import CheckpointError
from protocol.records import from_record, to_record
from protocol.settings import RunSettings

SETTINGS = RunSettings(
    central_dp_mode="fixed",
    central_dp_clip=1.0,
    central_dp_target_epsilon=3.0,
    num_clients=40,
    fraction_train=0.25,  # m = 10
    num_rounds=2,
    privacy_mode="none",
)

ADAPTIVE = dataclasses.replace(
    SETTINGS, central_dp_mode="adaptive", central_dp_count_stddev_fraction=0.5
)


class Grid:
    """The one grid method sampling uses."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


@pytest.fixture(autouse=True)
def _serverapp_identity():
    with server_identity():
        yield


def _strategy(out: Path, settings: RunSettings = SETTINGS) -> WeightedFedAvg:
    strategy = make_strategy(settings)
    assert isinstance(strategy, WeightedFedAvg)
    strategy.central = CentralDp.from_settings(settings, out)
    return strategy


def _global() -> object:
    return to_record({"w": np.zeros(SHAPE, dtype=np.float32)})


def test_default_settings_attach_nothing(tmp_path: Path) -> None:
    assert CentralDp.from_settings(RunSettings(), tmp_path) is None


def test_clients_are_poisson_sampled_at_the_rate(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    sizes = []
    for _ in range(40):
        sent = strategy.configure_train(1, _global(), ConfigRecord(), Grid(40))  # type: ignore[arg-type]
        sizes.append(len(list(sent)))
        strategy.rounds.pop(1)
    assert 6 < np.mean(sizes) < 14 and len(set(sizes)) > 3  # q N = 10 on average, not fixed


def test_updates_are_clipped_and_weighted_uniformly_and_the_ledger_is_written(
    tmp_path: Path,
) -> None:
    strategy = _strategy(tmp_path)
    strategy.central.dp._noise = lambda std, shape: np.zeros(shape)  # type: ignore[union-attr]
    strategy.current = _global()  # type: ignore[assignment]
    # a huge update and a small one: the screen would reject the first; central DP clips it
    replies = [trained(11, 100.0, 10), trained(12, 0.01, 1000), trained(13, 0.01, 10)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    clipped = 1.0 / np.sqrt(6)  # w = 100 on 6 entries, clipped to norm 1
    np.testing.assert_allclose(from_record(arrays)["w"], (clipped + 0.02) / 10, rtol=1e-5)
    log = strategy.rounds[1]
    assert [o.status for o in log.outcomes] == ["trained"] * 3
    assert [o.weight for o in log.outcomes] == [0.1] * 3  # not by example count
    ledger = json.loads((tmp_path / SERVER_LEDGER).read_text())
    assert ledger["unit"] == "client" and len(ledger["events"]) == 1
    assert 0 < log.central["client_level_epsilon"] < 3.0


def test_a_round_with_no_replies_still_releases_noise(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    strategy.current = _global()  # type: ignore[assignment]
    arrays, _ = strategy.aggregate_train(1, [])
    assert arrays is not None and np.any(from_record(arrays)["w"] != 0)
    assert len(strategy.central.dp.ledger.events) == 1  # type: ignore[union-attr]


def test_the_budget_guard_stops_before_the_target_is_passed(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    for rnd in (1, 2):  # the planned rounds
        strategy.current = _global()  # type: ignore[assignment]
        assert strategy.aggregate_train(rnd, [trained(11, 0.1, 10)])[0] is not None
    sent = strategy.configure_train(3, _global(), ConfigRecord(), Grid(40))  # type: ignore[arg-type]
    assert list(sent) == []
    arrays, _ = strategy.aggregate_train(3, [])
    assert arrays is None
    log = strategy.rounds[3]
    assert log.kept_previous_model and "past central_dp.target_epsilon=3" in log.kept_reason
    assert strategy.central.dp.epsilon() <= 3.0  # type: ignore[union-attr]
    assert len(strategy.central.dp.ledger.events) == 2  # type: ignore[union-attr]


def test_resume_restores_the_ledger_and_a_newer_file_wins(tmp_path: Path) -> None:
    first = _strategy(tmp_path, ADAPTIVE)
    first.current = _global()  # type: ignore[assignment]
    first.aggregate_train(1, [trained(11, 0.1, 10)])
    state = json.loads(json.dumps(first.strategy_state()))
    first.current = _global()  # type: ignore[assignment]
    first.aggregate_train(2, [trained(11, 0.1, 10)])  # released, but no checkpoint after it
    again = _strategy(tmp_path, ADAPTIVE)
    again.load_strategy_state(state)
    assert len(again.central.dp.ledger.events) == 2  # type: ignore[union-attr]
    assert again.central.dp.rule.clip == state["central"]["clip"]  # type: ignore[union-attr]
    plain = make_strategy(dataclasses.replace(SETTINGS, central_dp_mode="none"))
    without = plain.strategy_state()  # type: ignore[attr-defined]
    with pytest.raises(CheckpointError, match="no client-level ledger"):
        _strategy(tmp_path / "other").load_strategy_state(without)
