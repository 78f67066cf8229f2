"""Client-level DP (privacy.central): accounting, budget guard, clipping, adaptive quantiles."""

from __future__ import annotations

import json
import math
import random

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant

from privacy.central import (
    CLIPPINGS,
    SERVER_LEDGER,
    AdaptiveClip,
    CentralPlan,
    ClientLevelDp,
    FixedClip,
    clip_update,
    plan_central,
    poisson_sample,
    server_ledger_epsilon,
)
from privacy.ledger import PrivacyLedger
from protocol.groups import CENTRAL_DP_MODES

DELTA = 1e-5


def _independent_epsilon(z: float, q: float, rounds: int, delta: float) -> float:
    """dp_accounting's PLD built here: replace-one, a finer grid, every round its own event."""
    acc = pld_privacy_accountant.PLDAccountant(
        dpa.NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4
    )
    round_event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    acc.compose(dpa.ComposedDpEvent([round_event] * rounds))
    return float(acc.get_epsilon(delta))


def _zero_noise(std: float, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape)


def test_modes_of_the_settings_are_the_registered_clip_rules() -> None:
    assert CENTRAL_DP_MODES == ("none", *CLIPPINGS)


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_server_ledger_equals_an_independent_dp_accounting_computation(clipping: str) -> None:
    plan = plan_central(clipping, 4.0, DELTA, 200, 0.1, 5, count_stddev_fraction=0.5)
    dp = ClientLevelDp(plan, CLIPPINGS[clipping](clip=1.0), noise=_zero_noise)
    ref = {"w": np.zeros(3, dtype=np.float32)}
    eps = []
    for rnd in range(1, 6):
        dp.release(rnd, ref, [{"w": np.ones(3)}])
        eps.append(dp.epsilon())
    independent = _independent_epsilon(plan.noise_multiplier, 0.1, 5, DELTA)
    # pessimistic PLD: an upper bound, within 0.1% of the finer independent one
    assert independent <= eps[-1] <= independent * (1 + 1e-3), (eps[-1], independent)
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert 0.99 * 4.0 <= eps[-1] <= 4.0  # calibrated once for the planned rounds
    assert all(e.sample_rate == 0.1 and e.steps == 1 for e in dp.ledger.events)
    assert [e.round for e in dp.ledger.events] == [1, 2, 3, 4, 5]


def test_amplification_by_sampling_beats_the_same_noise_without_it() -> None:
    """What Flower's RdpAccountant reports (no amplification) is far above ours for q = 0.1."""
    plan = plan_central("fixed", 4.0, DELTA, 1000, 0.1, 20)
    acc = pld_privacy_accountant.PLDAccountant(dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.GaussianDpEvent(plan.noise_multiplier), 20)
    assert acc.get_epsilon(DELTA) > 3 * 4.0


def test_adaptive_splits_the_noise_as_andrew_et_al_theorem_1() -> None:
    plan = plan_central("adaptive", 4.0, DELTA, 200, 0.1, 5, count_stddev_fraction=0.5)
    assert plan.count_stddev == pytest.approx(0.5 * 20)
    z, z_u, sigma_b = plan.noise_multiplier, plan.update_noise_multiplier, plan.count_stddev
    assert (z_u**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
    assert z_u > z
    fixed = plan_central("fixed", 4.0, DELTA, 200, 0.1, 5)
    assert fixed.update_noise_multiplier == fixed.noise_multiplier == z
    assert fixed.count_stddev == 0.0


def test_budget_guard_refuses_the_round_that_would_pass_the_target() -> None:
    plan = plan_central("fixed", 2.0, DELTA, 100, 0.2, 3)
    dp = ClientLevelDp(plan, FixedClip(1.0), noise=_zero_noise)
    ref = {"w": np.zeros(2)}
    for rnd in (1, 2, 3):
        assert dp.guard(rnd) == ""
        dp.release(rnd, ref, [])
    assert dp.epsilon() <= 2.0
    reason = dp.guard(4)
    assert "central_dp.target_epsilon=2" in reason and "round 4" in reason
    with pytest.raises(RuntimeError, match="client-level budget"):
        dp.release(4, ref, [])
    assert len(dp.ledger.events) == 3  # nothing recorded, nothing released


def test_release_clips_and_divides_by_the_expected_clients() -> None:
    plan = plan_central("fixed", 4.0, DELTA, 100, 0.1, 3)  # m = 10
    dp = ClientLevelDp(plan, FixedClip(1.0), noise=_zero_noise)
    ref = {"w": np.full(2, 1.0, dtype=np.float32), "steps": np.array([7], dtype=np.int64)}
    updates = [
        {"w": np.array([3.0, 4.0]), "steps": np.array([100])},  # norm 5: scaled to 1
        {"w": np.array([0.3, 0.4]), "steps": np.array([-5])},  # norm 0.5: kept
    ]
    new, info = dp.release(1, ref, updates)
    np.testing.assert_allclose(new["w"], 1.0 + (np.array([0.6, 0.8]) + [0.3, 0.4]) / 10, 1e-6)
    assert new["w"].dtype == np.float32
    np.testing.assert_array_equal(new["steps"], [7])  # not a float array: never released
    assert info["clip"] == 1.0 and math.isnan(info["unclipped_fraction"])


def test_release_adds_noise_of_the_planned_scale() -> None:
    plan = plan_central("adaptive", 4.0, DELTA, 100, 0.5, 3, count_stddev_fraction=0.1)
    seen: list[tuple[float, tuple[int, ...]]] = []

    def noise(std: float, shape: tuple[int, ...]) -> np.ndarray:
        seen.append((std, shape))
        return np.zeros(shape)

    dp = ClientLevelDp(plan, AdaptiveClip(0.5), noise=noise)
    dp.release(1, {"w": np.zeros((2, 3))}, [{"w": np.ones((2, 3))}])
    assert seen == [(plan.update_noise_multiplier * 0.5, (2, 3)), (plan.count_stddev, ())]
    noisy = ClientLevelDp(plan, FixedClip(1.0))  # secret noise: the aggregate moves
    new, _ = noisy.release(1, {"w": np.zeros(10_000)}, [])
    std = plan.update_noise_multiplier / plan.expected_clients
    assert np.std(new["w"]) == pytest.approx(std, rel=0.05)
    again, _ = noisy.release(2, {"w": np.zeros(10_000)}, [])  # fresh noise every round
    assert not np.allclose(again["w"], new["w"])


def test_clip_update_is_a_flat_l2_clip_over_float_arrays() -> None:
    clipped, norm = clip_update({"a": np.array([3.0]), "b": np.array([4.0]), "n": np.array([9])}, 1)
    assert norm == pytest.approx(5.0)
    assert set(clipped) == {"a", "b"}
    np.testing.assert_allclose([clipped["a"][0], clipped["b"][0]], [0.6, 0.8])


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_adaptive_clipping_converges_to_the_target_quantile(quantile: float) -> None:
    """On log-normal norms the clip settles where the chosen share of norms lies below it."""
    rounds, m = 200, 100
    # Andrew et al.'s count noise (m / 20); the update noise does not move the clip
    plan = CentralPlan("adaptive", 1.0, 1.0, m / 20, 0.1, m, rounds, math.inf, DELTA)
    gen = np.random.default_rng(0)
    dp = ClientLevelDp(
        plan,
        AdaptiveClip(0.1, quantile=quantile, lr=0.2),
        noise=lambda std, shape: gen.normal(0.0, std, shape),
    )
    dp.guard = lambda rnd: ""  # type: ignore[method-assign]  # no accounting here (fast)
    ref = {"w": np.zeros(2)}
    clips = []
    for rnd in range(1, rounds + 1):
        norms = np.exp(gen.normal(0.0, 0.5, m))  # median 1
        angle = gen.uniform(0, 2 * np.pi, m)
        ups = [
            {"w": n * np.array([np.cos(a), np.sin(a)])} for n, a in zip(norms, angle, strict=True)
        ]
        dp.release(rnd, ref, ups)
        clips.append(dp.rule.clip)
    settled = float(np.mean(clips[-100:]))
    true_quantile = math.exp(0.5 * float(np.quantile(gen.standard_normal(200_000), quantile)))
    assert settled == pytest.approx(true_quantile, rel=0.1)


def test_poisson_sampling_takes_each_client_independently_at_the_rate() -> None:
    rng = random.Random(1)
    sizes = [len(poisson_sample(range(1000), 0.1, rng)) for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(100, rel=0.03)
    assert np.std(sizes) == pytest.approx(math.sqrt(1000 * 0.1 * 0.9), rel=0.2)
    assert len(set(sizes)) > 10  # not a fixed size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("adaptive", 4.0, DELTA, 50, 0.2, 3, 0.01), "central_dp.count_stddev_fraction=0.01"),
        (("fixed", 4.0, DELTA, 50, 0.01, 3), "federation.fraction_train=0.01 gives 0.5"),
        (("nope", 4.0, DELTA, 50, 0.2, 3), "central_dp.mode must be one of"),
    ],
)
def test_plans_that_cannot_be_met_name_the_setting(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        plan_central(*args)


def test_state_and_ledger_file_round_trip(tmp_path) -> None:
    plan = plan_central("adaptive", 4.0, DELTA, 100, 0.2, 3, count_stddev_fraction=0.2)
    dp = ClientLevelDp(plan, AdaptiveClip(0.1), noise=_zero_noise)
    dp.release(1, {"w": np.zeros(2)}, [{"w": np.ones(2)}] * 20)
    state = json.loads(json.dumps(dp.state_dict()))
    again = ClientLevelDp(plan, AdaptiveClip(0.1))
    again.load_state_dict(state)
    assert again.rule.clip == dp.rule.clip != 0.1
    assert again.epsilon() == dp.epsilon()
    path = tmp_path / SERVER_LEDGER
    path.parent.mkdir()
    path.write_text(json.dumps(dp.ledger_file()))
    data = json.loads(path.read_text())
    assert data["unit"] == "client" and data["neighbouring"] == "replace_one"
    assert PrivacyLedger.from_dict(data).epsilon() == dp.epsilon()
    assert server_ledger_epsilon(tmp_path) == dp.epsilon()
    assert server_ledger_epsilon(tmp_path / "nothing") is None


def test_the_stored_plan_survives_a_resume_that_raises_the_rounds() -> None:
    plan = plan_central("fixed", 4.0, DELTA, 100, 0.2, 2)
    dp = ClientLevelDp(plan, FixedClip(1.0), noise=_zero_noise)
    for rnd in (1, 2):
        dp.release(rnd, {"w": np.zeros(2)}, [])
    more = ClientLevelDp(plan_central("fixed", 4.0, DELTA, 100, 0.2, 4), FixedClip(1.0))
    more.load_state_dict(json.loads(json.dumps(dp.state_dict())))
    assert more.plan == plan  # not re-planned for 4 rounds
    assert "past central_dp.target_epsilon=4" in more.guard(3)
