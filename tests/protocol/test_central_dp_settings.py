"""central_dp: bad input fails before any process starts, naming the setting."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.config import check_central_dp
from protocol.settings import RunSettings

ADAPTIVE = RunSettings(
    central_dp_mode="adaptive",
    num_clients=50,
    fraction_train=0.2,
    central_dp_count_stddev_fraction=0.2,
    privacy_mode="none",
)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"central_dp_target_epsilon": -1.0}, "central_dp.target_epsilon must be > 0, got -1"),
        ({"central_dp_target_epsilon": 0.0}, "central_dp.target_epsilon must be > 0, got 0"),
        ({"central_dp_delta": 1.5}, "central_dp.delta must be in (0, 1), got 1.5"),
        ({"central_dp_delta": 0.0}, "central_dp.delta must be in (0, 1), got 0"),
        (
            {"central_dp_delta": 0.05},
            "central_dp.delta must be below 1/federation.num_clients = 0.02",
        ),
        ({"central_dp_target_quantile": 1.0}, "central_dp.target_quantile must be in (0, 1)"),
        ({"central_dp_target_quantile": 0.0}, "central_dp.target_quantile must be in (0, 1)"),
        ({"central_dp_clip_lr": 0.0}, "central_dp.clip_lr must be > 0"),
        (
            {"fraction_train": 0.01},
            "federation.fraction_train gives 0.5 expected clients a round",
        ),
        ({"aggregation_strategy": "krum"}, "aggregation.strategy must be one of ['fedavg',"),
        ({"aggregation_strategy": "fedmedian"}, "a median or a selection depends on every"),
        (
            {"aggregation_strategy": "scorer", "aggregation_scorer": "median_agreement"},
            "aggregation.scorer must be 'uniform' with central_dp.mode='adaptive'",
        ),
        (
            {"privacy_mode": "functional", "model_name": "logistic"},
            "privacy.mode must release weights with central_dp.mode='adaptive'",
        ),
    ],
)
def test_bad_central_dp_settings_name_the_setting(changes: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        dataclasses.replace(ADAPTIVE, **changes).validate()
    assert needle in str(err.value)


def test_adaptive_without_enough_count_noise_is_refused_up_front() -> None:
    settings = dataclasses.replace(ADAPTIVE, central_dp_count_stddev_fraction=0.01).validate()
    with pytest.raises(ValueError, match=r"central_dp\.count_stddev_fraction=0\.01 gives"):
        check_central_dp(settings)
    check_central_dp(ADAPTIVE.validate())  # 0.2 x 10 expected clients is enough


def test_uniform_scorer_and_fedavg_are_accepted() -> None:
    dataclasses.replace(ADAPTIVE, aggregation_strategy="scorer").validate()
    dataclasses.replace(ADAPTIVE, central_dp_mode="fixed").validate()


def test_default_is_off_and_checks_nothing_more() -> None:
    s = RunSettings()
    assert s.central_dp_mode == "none"
    # under none the cross-group rules do not apply (krum on 3 clients stays as it was)
    dataclasses.replace(s, central_dp_delta=0.5).validate()
    check_central_dp(s)
