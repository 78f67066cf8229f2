"""privacy.functional_noise=gaussian: the analytic Gaussian release of the softmax head."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from privacy.functional import (
    FUNCTIONAL_NOISES,
    HEAD_KINDS,
    SoftmaxGaussianMechanism,
    SoftmaxStatistics,
    functional_noise,
    head_kind,
    make_noise_generator,
    softmax_sensitivity_l2,
)
from privacy.inference.calibration import gaussian_delta
from privacy.laplace import SecureSource
from privacy.ledger import PrivacyLedger, PureDpEvent, SampledGaussianEvent
from privacy.modes import get_mode
from protocol.groups import FUNCTIONAL_NOISES as SETTING_NOISES
from protocol.groups import PrivacyGroup
from protocol.settings import RunSettings

DELTA = 1e-5
D2 = 3.0 / math.sqrt(2.0)


def records(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x /= np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True))
    return x, rng.integers(0, k, n)


def test_noise_names_agree_with_the_setting() -> None:
    assert set(SETTING_NOISES) == set(FUNCTIONAL_NOISES)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-8])
def test_ledger_epsilon_of_the_one_event_is_at_most_the_target_and_close(
    epsilon: float, delta: float
) -> None:
    mech = SoftmaxGaussianMechanism(epsilon, delta)
    event = mech.event(round=1)
    assert isinstance(event, SampledGaussianEvent)
    assert (event.sample_rate, event.steps, event.round) == (1.0, 1, 1)
    ledger = PrivacyLedger(delta)
    ledger.record(event)
    spent = ledger.epsilon()
    assert spent <= epsilon
    assert spent >= 0.98 * epsilon  # the PLD reads (nearly) the analytic calibration
    # Balle-Wang's exact condition holds at the sigma drawn with, and fails 1% below it
    sigma = mech.sigma(20)
    assert gaussian_delta(sigma, epsilon, D2) <= delta
    assert gaussian_delta(0.99 * sigma, epsilon, D2) > delta


def test_noise_scale_depends_on_neither_the_classes_nor_the_dimension() -> None:
    kind = head_kind("softmax")
    scales = {
        kind.noise_scale(1.0, "l2", d, k, noise="gaussian", delta=DELTA)
        for d in (1, 17, 65, 500)
        for k in (2, 10, 100)
    }
    assert len(scales) == 1
    sigma = SoftmaxGaussianMechanism(1.0, DELTA).sigma(17)
    assert scales == {sigma / math.sqrt(2.0)}  # Laplace units: the same std as Laplace(b)
    # where the Laplace scale grows with d
    lap = [kind.noise_scale(1.0, "l2", d, 10) for d in (17, 65)]
    assert lap[1] > 3 * lap[0]
    assert softmax_sensitivity_l2(500) == D2


def test_empirical_std_of_the_released_coefficients_is_sigma() -> None:
    x, y = records(200, 30, 10)
    stats = SoftmaxStatistics.from_records(x, y, 10)
    mech = SoftmaxGaussianMechanism(1.0, DELTA)
    noise = mech.perturb(stats, SecureSource()).released() - stats.released()
    sigma = mech.sigma(30)
    assert noise.size == 10 * 30 + 30 * 31 // 2  # 765 coefficients
    assert abs(noise.std() / sigma - 1.0) < 0.08  # 4 standard errors at n = 765
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(noise.size)
    released = mech.perturb(stats, SecureSource())
    np.testing.assert_array_equal(released.gram, released.gram.T)  # still symmetric


def test_each_release_is_a_fresh_draw_and_the_seeded_one_reproduces() -> None:
    x, y = records(100, 8, 3)
    targets = [(y == k).astype(np.float64) for k in range(3)]
    kind = head_kind("softmax")
    a, b = (
        kind.release(x, targets, 1.0, "l2", SecureSource(), noise="gaussian", delta=DELTA)
        for _ in range(2)
    )
    assert not np.array_equal(a["gram"], b["gram"])
    assert not np.array_equal(a["class_sums"], b["class_sums"])
    # privacy.reproducible_noise (no guarantee): the same seed draws the same noise
    c, e = (
        kind.release(x, targets, 1.0, "l2", make_noise_generator(7), noise="gaussian", delta=DELTA)
        for _ in range(2)
    )
    np.testing.assert_array_equal(c["gram"], e["gram"])


def test_ledger_epsilon_composes_the_release_with_other_events() -> None:
    ledger = PrivacyLedger(DELTA)
    gauss = head_kind("softmax").event(2.0, 1, noise="gaussian", delta=DELTA)
    ledger.record(gauss)
    alone = ledger.epsilon()
    ledger.record(PureDpEvent(0.25, 2, "evaluation"))
    assert ledger.epsilon() == pytest.approx(alone + 0.25, rel=1e-12)
    # two Gaussian releases compose in the PLD (tighter than 2 x epsilon, more than 1 x)
    twice = PrivacyLedger(DELTA, events=[gauss, gauss]).epsilon()
    assert alone < twice < 2 * alone
    # the Laplace event is still the pure one
    lap = head_kind("softmax").event(2.0, 1)
    assert lap == PureDpEvent(2.0, 1, "functional")


def test_the_gaussian_mode_spends_delta_and_the_laplace_one_does_not() -> None:
    mode = get_mode("functional")
    base = RunSettings(model_name="fm_network", privacy_mode="functional")
    assert not mode.delta_spent(base)
    assert mode.delta_spent(dataclasses.replace(base, privacy_functional_noise="gaussian"))
    assert (
        functional_noise("gaussian").spends_delta and not functional_noise("laplace").spends_delta
    )


@pytest.mark.parametrize(
    "name", sorted(k for k, v in HEAD_KINDS.items() if "gaussian" not in v.noises)
)
def test_row_objectives_without_an_l2_sensitivity_refuse_gaussian_noise(name: str) -> None:
    kind = head_kind(name)
    x, y = records(20, 4, 2)
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of \['laplace'\]"):
        kind.release(x, [y.astype(float)], 1.0, "l2", SecureSource(), noise="gaussian", delta=DELTA)
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of"):
        kind.noise_scale(1.0, "l2", 4, 1, noise="gaussian", delta=DELTA)


def test_bad_noise_name_or_delta_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of .*got 'foo'"):
        PrivacyGroup(functional_noise="foo").validate()
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of .*'foo'"):
        RunSettings(privacy_functional_noise="foo").validate()
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of"):
        head_kind("softmax").release(
            *records(5, 3, 2)[:1], [np.ones(5), np.zeros(5)], 1.0, "l2", SecureSource(), noise="foo"
        )
    with pytest.raises(ValueError, match=r"privacy\.delta must be in \(0, 1\)"):
        SoftmaxGaussianMechanism(1.0, 0.0)
    with pytest.raises(ValueError, match=r"privacy\.target_epsilon must be a finite number > 0"):
        SoftmaxGaussianMechanism(0.0, DELTA)
