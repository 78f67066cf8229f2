"""Noise calibration for inference privacy: Gaussian (analytic and classical) and Laplace.

All functions take the sensitivity ``sensitivity`` (the largest distance between the two
released values of neighbouring inputs, L2 for the Gaussian, L1 for the Laplace) and return
the noise scale. Inputs are checked: ``epsilon`` finite and ``> 0``, ``delta`` in ``(0, 1)``
for the Gaussian (in ``[0, 1)`` where the caller also allows a pure mechanism), sensitivity
finite and ``> 0``; errors name the setting and the value found.
"""

from __future__ import annotations

import math

from scipy.special import log_ndtr, ndtr


def check_epsilon(epsilon: float, name: str = "epsilon") -> float:
    """``epsilon`` as a float; ``ValueError`` unless it is finite and ``> 0``."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise ValueError(f"{name} must be a number > 0, got {epsilon!r}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"{name} must be finite and > 0, got {epsilon!r}")
    return float(epsilon)


def check_delta(
    delta: float, name: str = "delta", *, allow_zero: bool = False, pure: list[str] | None = None
) -> float:
    """``delta`` as a float in ``(0, 1)`` (``[0, 1)`` with ``allow_zero``).

    ``pure`` names the mechanisms that accept 0, for the message.
    """
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta):
        raise ValueError(f"{name} must be a number in [0, 1), got {delta!r}")
    low_ok = delta >= 0 if allow_zero else delta > 0
    if not (low_ok and delta < 1):
        only = f" (0 only for {', '.join(pure)})" if pure and not allow_zero else ""
        interval = "[0, 1)" if allow_zero else f"(0, 1){only}"
        raise ValueError(f"{name} must be in {interval}, got {delta!r}")
    return float(delta)


def check_positive(value: float, name: str) -> float:
    """``value`` as a float; ``ValueError`` unless it is finite and ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The exact (tight) delta of the Gaussian mechanism at ``epsilon``.

    Balle and Wang (ICML 2018, "Improving the Gaussian Mechanism for Differential Privacy:
    Analytical Calibration and Optimal Denoising", Theorem 8): adding ``N(0, sigma^2 I)`` to
    a function of L2 sensitivity ``D`` is ``(epsilon, delta)``-DP if and only if

        Phi(D / (2 sigma) - epsilon sigma / D) - e^epsilon Phi(-D / (2 sigma) - epsilon sigma / D)
            <= delta.

    Computed with ``e^epsilon Phi(b) = exp(epsilon + log Phi(b))`` so that large epsilons
    neither overflow nor cancel to nonsense.
    """
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    first = float(ndtr(a - b))
    second = math.exp(epsilon + float(log_ndtr(-a - b)))
    return max(0.0, first - second)


def analytic_gaussian_sigma(
    epsilon: float, delta: float, sensitivity: float, *, rel_tol: float = 1e-12
) -> float:
    """Smallest ``sigma`` meeting Balle and Wang's exact condition (:func:`gaussian_delta`).

    ``gaussian_delta`` decreases strictly in ``sigma``, so bisection on ``log sigma`` finds the
    boundary; the upper end of the final bracket is returned (its delta is ``<= delta``, so the
    returned sigma is always valid, never a rounding below the boundary).
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    sensitivity = check_positive(sensitivity, "sensitivity")
    lo, hi = sensitivity * 1e-6, sensitivity
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        lo, hi = hi, hi * 2.0
    while gaussian_delta(lo, epsilon, sensitivity) <= delta:
        lo /= 2.0
        if lo < 1e-300:  # pragma: no cover - delta so large any sigma works
            return hi
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, epsilon, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def classical_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """``sqrt(2 ln(1.25 / delta)) D / epsilon`` (Dwork and Roth 2014, Theorem A.1).

    Valid only for ``epsilon < 1``; ``ValueError`` otherwise (the theorem says nothing there).
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    sensitivity = check_positive(sensitivity, "sensitivity")
    if epsilon >= 1:
        raise ValueError(
            f"the classical Gaussian calibration holds for epsilon < 1 only, got {epsilon!r}"
        )
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity / epsilon


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The tighter of the analytic and (where valid, ``epsilon < 1``) the classical sigma.

    The analytic condition is necessary and sufficient, so it is never looser than the
    classical one; the minimum is taken anyway so the rule reads as stated.
    """
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    if epsilon < 1:
        sigma = min(sigma, classical_gaussian_sigma(epsilon, delta, sensitivity))
    return sigma


def laplace_scale(epsilon: float, sensitivity: float) -> float:
    """The Laplace scale ``b = D1 / epsilon`` for L1 sensitivity ``D1``.

    Laplace noise of scale ``b`` on each coordinate of an L1-sensitivity-``D1`` value is
    ``epsilon``-DP (Dwork, McSherry, Nissim and Smith 2006; Dwork and Roth 2014, Thm 3.6).
    """
    return check_positive(sensitivity, "sensitivity") / check_epsilon(epsilon)
