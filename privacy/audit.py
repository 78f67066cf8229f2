"""One-run privacy auditing: an empirical lower bound on epsilon from guesses about canaries.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). ``m`` canaries each get a secret fair coin ``S_i`` (in or out, drawn with
:class:`secrets.SystemRandom`); the mechanism runs once on the data the coins select; an
attacker who sees the output (never the coins) scores every canary, guesses "in" for the
``k_plus`` highest scores, "out" for the ``k_minus`` lowest and abstains on the rest. Then:

**Theorem (Steinke et al. 2023, main theorem, guesses with abstentions).** Let the mechanism be
``(epsilon, delta)``-DP with respect to changing one canary's coin (here: replacing one record,
fedpriv's relation, ``docs/privacy.md``). Let ``r = k_plus + k_minus`` guesses be made and ``W``
of them be correct. For every ``v``,

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta * alpha(v),   q = e^eps / (1 + e^eps),

    alpha(v) = max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i

(with ``delta = 0`` this is the pure-DP statement: the guesses are no better than ``r``
independent ``epsilon``-randomised responses). So if ``v`` correct guesses are observed and the
right-hand side at ``epsilon`` is below ``beta = 1 - confidence``, the mechanism is *not*
``(epsilon, delta)``-DP, except with probability ``beta``. :func:`epsilon_lower_bound` returns
the largest such ``epsilon`` (bisection on the p-value, which increases with ``epsilon``), as
the paper's reference code does.

Choosing the guess counts. The theorem is for ``k_plus``/``k_minus`` fixed before the coins are
looked at. :func:`audit_scores` tries a fixed grid of ``G`` guess counts and tests each at
``beta / G`` (a Bonferroni union bound), so the best of them is still a valid lower bound at
confidence ``1 - beta``; the paper's experiments report the best ``k`` without that correction,
which is slightly optimistic. Nothing here looks at the coins before the counts are fixed.

Pure functions of counts and scores; no Flower, no training (that is :mod:`tasks.audit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_CANARIES = 100
"""Below this no guess count can certify a useful bound at usual confidences."""

GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
"""The default grid: the share of the ``m`` canaries guessed on (``r = round(f m)``)."""


def check_audit(canaries: int, confidence: float, delta: float = 0.0) -> None:
    """``ValueError`` naming the setting when no bound can be computed from these inputs."""
    if isinstance(canaries, bool) or not isinstance(canaries, (int, np.integer)):
        raise ValueError(f"audit.canaries must be an integer >= {MIN_CANARIES}, got {canaries!r}")
    if canaries < MIN_CANARIES:
        raise ValueError(f"audit.canaries must be >= {MIN_CANARIES}, got {canaries}")
    if not (math.isfinite(confidence) and 0.0 < confidence < 1.0):
        raise ValueError(f"audit.confidence must be in (0, 1), got {confidence:g}")
    if not (math.isfinite(delta) and 0.0 <= delta < 1.0):
        raise ValueError(f"privacy.delta must be in [0, 1) for an audit, got {delta:g}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Upper bound on ``P[W >= v]`` for an ``(epsilon, delta)``-DP mechanism (the theorem).

    Parameters
    ----------
    m : int
        Canaries, each in or out by a fair secret coin.
    r : int
        Guesses made (the rest abstain), ``0 <= r <= m``.
    v : int
        Correct guesses, ``0 <= v <= r``.
    epsilon, delta : float
        The null hypothesis: the mechanism is ``(epsilon, delta)``-DP per canary.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon:g}, {delta:g}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    window = np.cumsum(stats.binom.pmf(v - i, r, q))  # P[v - i <= Binomial < v]
    alpha = float(np.max(window / i))
    return min(beta + 2.0 * m * delta * alpha, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, confidence: float = 0.95, delta: float = 0.0
) -> float:
    """The largest ``epsilon`` that ``v`` correct of ``r`` guesses refute at ``confidence``.

    0 when even ``epsilon = 0`` is not refuted (the guesses are no better than chance).
    Bisection to 1e-6 on :func:`p_value`, which is increasing in ``epsilon``.
    """
    check_audit(m, confidence, delta)
    beta = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:  # all correct: finite, since q^r -> 1 slowly
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            return lo
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class AuditResult:
    """The best bound over the grid of guess counts, and the guesses that gave it."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    guesses: int
    """``r = k_plus + k_minus`` of the best grid point."""
    correct: int
    k_plus: int
    k_minus: int
    grid_size: int
    """How many guess counts were tried; each was tested at ``(1 - confidence) / grid_size``."""

    @property
    def accuracy(self) -> float:
        """Share of the guesses made that were right (NaN when none were made)."""
        return self.correct / self.guesses if self.guesses else math.nan


def guess_grid(m: int, fractions: Sequence[float] = GUESS_FRACTIONS) -> list[tuple[int, int]]:
    """``(k_plus, k_minus)`` pairs, fixed before any coin is read.

    For each share ``f``, ``r = round(f m)`` guesses: half "in" (the top scores) and half
    "out" (the bottom scores).
    """
    grid: list[tuple[int, int]] = []
    for f in fractions:
        r = max(2, min(m, int(round(f * m))))
        pair = (r - r // 2, r // 2)
        if pair not in grid:
            grid.append(pair)
    return grid


def count_correct(scores: np.ndarray, coins: np.ndarray, k_plus: int, k_minus: int) -> int:
    """Correct guesses when the ``k_plus`` top scores guess "in", the ``k_minus`` bottom "out".

    Ties are broken by the order given (a stable sort); callers that may have ties shuffle
    first. ``coins`` is True where the canary was included.
    """
    order = np.argsort(scores, kind="stable")
    top = order[len(order) - k_plus :] if k_plus else order[:0]
    bottom = order[:k_minus]
    return int(np.sum(coins[top])) + int(np.sum(~coins[bottom]))


def audit_scores(
    scores: Sequence[float] | np.ndarray,
    coins: Sequence[bool] | np.ndarray,
    confidence: float = 0.95,
    delta: float = 0.0,
    grid: Sequence[tuple[int, int]] | None = None,
) -> AuditResult:
    """The one-run lower bound from attack scores (higher: more likely "in") and the coins.

    Tries every ``(k_plus, k_minus)`` of ``grid`` (default :func:`guess_grid`), each at
    confidence ``1 - (1 - confidence) / len(grid)`` (Bonferroni), and returns the best bound;
    valid at ``confidence`` overall. Non-finite scores are an error (an attack that failed).
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(coins, dtype=bool)
    m = len(s)
    check_audit(m, confidence, delta)
    if c.shape != s.shape:
        raise ValueError(f"need one coin per score, got {c.shape} coins for {s.shape} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"attack scores must be finite, got {int((~np.isfinite(s)).sum())} not")
    pairs = list(grid) if grid is not None else guess_grid(m)
    if not pairs or any(kp < 0 or km < 0 or kp + km > m for kp, km in pairs):
        raise ValueError(f"guess counts must be >= 0 with k_plus + k_minus <= {m}, got {pairs}")
    per_test = 1.0 - (1.0 - confidence) / len(pairs)
    best: AuditResult | None = None
    for kp, km in pairs:
        v = count_correct(s, c, kp, km)
        eps = epsilon_lower_bound(m, kp + km, v, per_test, delta)
        if best is None or eps > best.epsilon_lower_bound:
            best = AuditResult(eps, confidence, delta, m, kp + km, v, kp, km, len(pairs))
    assert best is not None
    return best
