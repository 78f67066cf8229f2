"""Server-side aggregation of released functional-mechanism objectives (framework-free).

Zhang, Zhang, Xiao, Yang, Winslett, "Functional Mechanism: Regression Analysis under
Differential Privacy", PVLDB 5(11), 2012 (FM). Each client ``i`` releases its noisy quadratic
objective ``f~_i(w) = f_i(w) + <eta_i, phi(w)>`` once, with ``eta_i`` i.i.d.
``Laplace(b)``, ``b = Delta / epsilon`` on every coefficient (FM Algorithm 1).

Why releasing the coefficients costs no extra privacy
    By FM Theorem 1 (the Laplace mechanism, Dwork, McSherry, Nissim, Smith 2006) the noisy
    coefficient vector itself is the ``epsilon``-DP output for client ``i``'s data. Sending
    it to the server is releasing that output, and everything the server computes from it
    (sums, minimisers, a model) is post-processing (Dwork and Roth 2014, Proposition 2.1).
    It is drawn once and sent unchanged every round, so repeating it reveals nothing new;
    the client's weights, which it already sends, are a function of the same output and
    the public global model. The ledger's single ``PureDpEvent(epsilon)`` covers both.
    Clients' data are disjoint, so each client's guarantee is about its own records (as
    every per-client guarantee in this project).

Why summing beats averaging minimisers
    Objectives are sums over records, so the federation's exact objective is
    ``F = sum_i f_i`` and ``sum_i f~_i = F + sum_i eta_i``: the curvature grows like ``K``
    (the number of clients) while the summed noise's standard deviation grows like
    ``sqrt(K)``; the relative noise shrinks by ``sqrt(K)``. A client that minimises its own
    ``f~_i`` needs a ridge as large as its own noise, and averaging the ``K`` ridged
    minimisers keeps that bias. Here one ridge, calibrated to the summed noise
    (:func:`summed_noise_ridge`), regularises the sum once (FM Section 6, with spectral
    trimming as in :func:`privacy.functional.objective.stabilise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from privacy.functional.objective import QuadraticObjective, minimise

__all__ = [
    "objectives_from_arrays",
    "objectives_to_arrays",
    "release_shapes",
    "solve_summed",
    "sum_objectives",
    "summed_noise_ridge",
]

FloatArray = npt.NDArray[np.float64]


def release_shapes(outputs: int, dim: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the arrays of one client's release (:func:`objectives_to_arrays`)."""
    return {"alpha": (outputs, dim), "M": (outputs, dim, dim), "c": (outputs,)}


def objectives_to_arrays(objectives: Sequence[QuadraticObjective]) -> dict[str, FloatArray]:
    """``K`` objectives of one dimension as arrays ``alpha (K, d)``, ``M (K, d, d)``, ``c (K,)``.

    The wire form of a client's release (one objective per head row); exact round trip with
    :func:`objectives_from_arrays`.
    """
    if not objectives:
        raise ValueError("objectives must not be empty")
    dims = {o.dim for o in objectives}
    if len(dims) != 1:
        raise ValueError(f"objectives must share one dimension, got {sorted(dims)}")
    return {
        "alpha": np.stack([o.alpha for o in objectives]),
        "M": np.stack([o.M for o in objectives]),
        "c": np.array([o.c for o in objectives], dtype=np.float64),
    }


def objectives_from_arrays(arrays: dict[str, np.ndarray]) -> list[QuadraticObjective]:
    """Inverse of :func:`objectives_to_arrays`.

    Raises
    ------
    ValueError
        On a missing array, inconsistent shapes, non-finite values or an asymmetric ``M``
        (:class:`QuadraticObjective` checks), the message naming the problem.
    """
    missing = {"alpha", "M", "c"} - set(arrays)
    if missing:
        raise ValueError(
            f"objective release must have arrays alpha, M, c; missing {sorted(missing)}"
        )
    alpha = np.asarray(arrays["alpha"], dtype=np.float64)
    m = np.asarray(arrays["M"], dtype=np.float64)
    c = np.asarray(arrays["c"], dtype=np.float64).reshape(-1)
    if alpha.ndim != 2:
        raise ValueError(f"objective release alpha must have shape (K, d), got {alpha.shape}")
    k, d = alpha.shape
    if m.shape != (k, d, d) or c.shape != (k,):
        raise ValueError(
            f"objective release for K={k}, d={d} needs M of shape {(k, d, d)} and c of shape "
            f"{(k,)}, got {m.shape} and {c.shape}"
        )
    return [QuadraticObjective(alpha=alpha[i], M=m[i], c=float(c[i])) for i in range(k)]


def _weights(n: int, weights: npt.ArrayLike | None) -> FloatArray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be {n} finite numbers >= 0, got {w.tolist()}")
    return w


def sum_objectives(
    objectives: Sequence[QuadraticObjective], weights: npt.ArrayLike | None = None
) -> QuadraticObjective:
    """``sum_i a_i f_i`` (every ``a_i = 1`` by default: the objective of the union of the data).

    Weights below 1 let a reliability scorer discount a client; they are public
    post-processing choices made by the server.
    """
    if not objectives:
        raise ValueError("objectives must not be empty")
    a = _weights(len(objectives), weights)
    d = objectives[0].dim
    if any(o.dim != d for o in objectives):
        raise ValueError(f"objectives must share one dimension, got {[o.dim for o in objectives]}")
    alpha = sum((ai * o.alpha for ai, o in zip(a, objectives, strict=True)), np.zeros(d))
    m = sum((ai * o.M for ai, o in zip(a, objectives, strict=True)), np.zeros((d, d)))
    c = float(sum(ai * o.c for ai, o in zip(a, objectives, strict=True)))
    return QuadraticObjective(alpha=alpha, M=m, c=c)


def summed_noise_ridge(noise_scale: float, d: int, weights: npt.ArrayLike) -> float:
    """Ridge for a weighted sum of noisy objectives: ``b * sqrt(d * sum_i a_i^2)``.

    The summed noise on each coefficient has variance ``2 b^2 sum_i a_i^2``, so its symmetric
    noise matrix has spectral norm of order ``b sqrt(d sum_i a_i^2)`` (up to a constant); a
    ridge of that size keeps the regularised sum positive definite with high probability
    when the exact objective is convex (FM Section 6). For one client with ``a = 1`` this is
    :func:`privacy.functional.mechanism.default_ridge`. It depends on public quantities only.
    """
    a = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    if d < 1:
        raise ValueError(f"dimension d must be >= 1, got {d}")
    return float(noise_scale * math.sqrt(d * float(np.sum(a * a))))


def solve_summed(
    objectives: Sequence[QuadraticObjective],
    noise_scale: float,
    weights: npt.ArrayLike | None = None,
) -> FloatArray:
    """Minimiser of the regularised, trimmed sum ``sum_i a_i f~_i`` (post-processing).

    Parameters
    ----------
    objectives : sequence of QuadraticObjective
        The clients' released noisy objectives for one head row.
    noise_scale : float
        Laplace scale ``b = Delta / epsilon`` each client used (public).
    weights : array_like or None
        ``a_i`` (default all 1).

    Returns
    -------
    numpy.ndarray of shape (d,)
        ``argmin`` of ``sum_i a_i f~_i + ridge ||w||^2`` after spectral trimming, with
        ``ridge = summed_noise_ridge(b, d, a)``.
    """
    a = _weights(len(objectives), weights)
    total = sum_objectives(objectives, a)
    return minimise(total, ridge=summed_noise_ridge(noise_scale, total.dim, a), trim=True)
