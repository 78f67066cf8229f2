"""The one-run estimator (privacy.audit) on randomised response, whose epsilon is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.audit import (
    audit_scores,
    check_audit,
    count_correct,
    epsilon_lower_bound,
    guess_grid,
    p_value,
)


def randomised_response(coins: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Each coin reported truthfully with probability e^eps / (1 + e^eps): exactly eps-DP.

    Returned as scores (+1 / -1) with a tiny random tie-break, which the attacker may add
    itself (it reads no coin).
    """
    truthful = rng.random(len(coins)) < 1.0 / (1.0 + math.exp(-epsilon))
    reported = np.where(truthful, coins, ~coins)
    return np.where(reported, 1.0, -1.0) + 1e-3 * rng.random(len(coins))


def test_never_above_the_true_epsilon_more_often_than_the_confidence_allows() -> None:
    rng = np.random.default_rng(0)
    eps, reps, m = 1.0, 300, 1000
    above = 0
    for _ in range(reps):
        coins = rng.random(m) < 0.5
        result = audit_scores(randomised_response(coins, eps, rng), coins, confidence=0.95)
        above += result.epsilon_lower_bound > eps
    # P[bound > eps] <= 0.05; with 300 reps the count exceeds 27 with probability < 1e-3
    assert above <= 27, above


def test_a_single_grid_point_is_exact_at_its_level() -> None:
    """With one guess count the failure rate is the binomial tail: close to, never over, beta."""
    rng = np.random.default_rng(1)
    eps, reps, m = 2.0, 400, 200
    above = 0
    for _ in range(reps):
        coins = rng.random(m) < 0.5
        s = randomised_response(coins, eps, rng)
        above += audit_scores(s, coins, 0.8, grid=[(m // 2, m // 2)]).epsilon_lower_bound > eps
    assert above / reps <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / reps), above


def test_comes_close_with_many_canaries() -> None:
    rng = np.random.default_rng(2)
    eps, m = 1.0, 100_000
    coins = rng.random(m) < 0.5
    result = audit_scores(randomised_response(coins, eps, rng), coins, confidence=0.95)
    assert 0.9 <= result.epsilon_lower_bound <= eps
    assert result.accuracy == pytest.approx(1 / (1 + math.exp(-eps)), abs=0.02)


def test_delta_only_lowers_the_bound() -> None:
    assert p_value(1000, 500, 400, 1.0, 1e-5) >= p_value(1000, 500, 400, 1.0, 0.0)
    pure = epsilon_lower_bound(1000, 500, 450, 0.95, 0.0)
    approx = epsilon_lower_bound(1000, 500, 450, 0.95, 1e-5)
    assert 0 < approx < pure


def test_chance_guesses_give_zero_and_perfect_ones_a_large_bound() -> None:
    assert epsilon_lower_bound(1000, 1000, 500) == 0.0
    assert epsilon_lower_bound(1000, 1000, 1000) > 5.0


def test_count_correct_reads_top_and_bottom() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8])
    coins = np.array([False, True, False, True, True])
    assert count_correct(scores, coins, 2, 0) == 2  # 0.9, 0.8 both in
    assert count_correct(scores, coins, 0, 2) == 1  # 0.1 out (right), 0.2 in (wrong)
    assert guess_grid(100)[0] == (1, 1)


@pytest.mark.parametrize(
    ("canaries", "confidence", "text"),
    [
        (5, 0.95, "audit.canaries must be >= 100, got 5"),
        (1000, 1.5, "audit.confidence must be in (0, 1), got 1.5"),
        (1000, 0.0, "audit.confidence must be in (0, 1), got 0"),
        (1000, float("nan"), "audit.confidence must be in (0, 1), got nan"),
    ],
)
def test_bad_input_names_the_setting(canaries: int, confidence: float, text: str) -> None:
    with pytest.raises(ValueError) as err:
        check_audit(canaries, confidence)
    assert text in str(err.value)
    with pytest.raises(ValueError, match="audit."):
        audit_scores(np.zeros(canaries), np.zeros(canaries, dtype=bool), confidence)


def test_scores_and_coins_must_match() -> None:
    with pytest.raises(ValueError, match="one coin per score"):
        audit_scores(np.zeros(200), np.zeros(100, dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        audit_scores(np.full(200, np.nan), np.zeros(200, dtype=bool))
