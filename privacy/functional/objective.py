"""Quadratic objectives of the functional mechanism, their sensitivities and their minimisers.

Zhang, Zhang, Xiao, Yang, Winslett, "Functional Mechanism: Regression Analysis under
Differential Privacy", PVLDB 5(11), 2012 (cited below as FM). Every objective here is the
degree-2 polynomial in the weights ``w`` (``d`` of them)

    f(w) = c + sum_j alpha_j w_j + sum_j M_jj w_j^2 + sum_{j<k} (2 M_jk) w_j w_k
         = c + alpha^T w + w^T M w,          M symmetric,

so its coefficient vector over the distinct monomials ``1, w_j, w_j^2, w_j w_k (j < k)``
(FM's ``Phi_0, Phi_1, Phi_2``) is ``[c, alpha, diag(M), 2 M_jk (j < k)]``
(:meth:`QuadraticObjective.coefficients`). The constant ``c`` does not move the minimiser
and is not released, so the mechanism perturbs ``[alpha, diag(M), 2 M_jk]``
(:meth:`QuadraticObjective.released_coefficients`). The sensitivities are L1 bounds on how
much that vector can change when one record is replaced, for records with ``||x||_2 <= 1``
(:class:`privacy.functional.bounds.FeatureBounds`); the paper's also count the constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "QuadraticObjective",
    "gradient_steps",
    "linear_regression_objective",
    "linear_sensitivity",
    "linear_sensitivity_l2",
    "logistic_regression_objective",
    "logistic_sensitivity",
    "logistic_sensitivity_l2",
    "minimise",
    "stabilise",
]

FloatArray = npt.NDArray[np.float64]
_NORM_TOL = 1e-9  # rows may exceed the unit ball by this much (floating point)


def _check_dim(d: int) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"dimension d must be a positive int, got {d!r}")
    return int(d)


def linear_sensitivity(d: int) -> float:
    """L1 sensitivity of the linear-regression objective: ``Delta = 2 (d+1)^2`` (FM Sec. 4).

    The polynomial of one record ``(x, y)`` is ``(y - x^T w)^2 = y^2 - 2 y x^T w +
    (x^T w)^2``; its coefficients are ``y^2``, ``-2 y x_j`` and ``x_j x_k`` (counted over all
    ordered pairs ``(j, k)``, i.e. ``x_j^2`` and ``2 x_j x_k`` for ``j < k``). Their L1 norm
    is ``(|y| + ||x||_1)^2 <= (1 + d)^2`` for ``|y| <= 1`` and ``|x_j| <= 1``. Replacing one
    record changes the sum by at most twice that (FM Lemma 1 / Theorem 1), so
    ``Delta = 2 (d+1)^2``. Under the enforced ``||x||_2 <= 1``, and without the constant,
    the bound is ``2 (2 sqrt(d) + d)`` (:func:`linear_sensitivity_l2`): the paper's bound is
    valid, and loose by about a factor ``d``.
    """
    d = _check_dim(d)
    return 2.0 * (d + 1) ** 2


def logistic_sensitivity(d: int) -> float:
    """L1 sensitivity of the Taylor-expanded logistic objective: ``d^2/4 + 3d`` (FM Sec. 5).

    One record's loss ``log(1 + exp(x^T w)) - y x^T w`` is expanded to second order at
    ``w = 0``: ``log 2 + (1/2 - y) x^T w + (1/8) (x^T w)^2``. FM bounds the degree-1
    coefficients term by term (``|f_1'(0)| + |y| = 1/2 + 1 = 3/2`` per feature) and the
    degree-2 ones by ``(1/8) sum_{j,k} |x_j x_k| <= d^2/8``; twice the per-record L1 norm is
    ``Delta = 2 (3d/2 + d^2/8) = d^2/4 + 3d`` (FM Lemma 1 / Theorem 1). The constant
    ``log 2`` is the same for every record; even counted it fits (``log 2 <= d``), so the
    bound also covers adding/removing a record when the constant is released.
    """
    d = _check_dim(d)
    return d * d / 4.0 + 3.0 * d


def linear_sensitivity_l2(d: int) -> float:
    """L1 sensitivity of the released linear objective under ``||x||_2 <= 1``: ``2 (2 sqrt d + d)``.

    Same derivation as :func:`linear_sensitivity` (FM Sec. 4, Lemma 1), with two changes that
    keep the guarantee:

    * the normalisation actually enforced gives ``||x||_1 <= sqrt(d) ||x||_2 <= sqrt(d)``
      instead of ``||x||_1 <= d``;
    * the constant ``y^2`` is not released (:meth:`QuadraticObjective.released_coefficients`):
      it does not move the minimiser, so releasing it would only spend budget.

    One record's released coefficients, ``-2 y x_j`` and ``x_j x_k`` over ordered pairs, have
    L1 norm ``2 |y| ||x||_1 + ||x||_1^2 <= 2 sqrt(d) + d``; replacing a record moves the sum
    by at most twice that (adding or removing one, by at most once).
    """
    d = _check_dim(d)
    return 2.0 * (2.0 * math.sqrt(d) + d)


def logistic_sensitivity_l2(d: int) -> float:
    """L1 sensitivity of the released Taylor logistic objective: ``sqrt(d) + d/4``.

    FM Sec. 5's polynomial per record is ``log 2 + (1/2 - y) x^T w + (1/8)(x^T w)^2``. With
    ``y in {0, 1}``, ``|1/2 - y| = 1/2`` exactly (FM bounds it by ``1/2 + 1``); under the
    enforced ``||x||_2 <= 1``, ``||x||_1 <= sqrt(d)``; and the constant ``log 2`` is not
    released (:meth:`QuadraticObjective.released_coefficients`: it does not move the
    minimiser). So one record's released coefficients have L1 norm at most
    ``sqrt(d)/2 + d/8``, and replacing (or adding/removing) a record moves the sum by at
    most twice that (FM Lemma 1).
    """
    d = _check_dim(d)
    return math.sqrt(d) + d / 4.0


@dataclass(frozen=True)
class QuadraticObjective:
    """``f(w) = c + alpha^T w + w^T M w`` with ``M`` symmetric ``d x d``.

    Attributes
    ----------
    alpha : numpy.ndarray of shape (d,)
        Degree-1 coefficients.
    M : numpy.ndarray of shape (d, d)
        Symmetric; the coefficient of ``w_j^2`` is ``M_jj`` and that of ``w_j w_k``
        (``j < k``) is ``2 M_jk``. Symmetrised exactly on construction.
    c : float, default 0.0
        Constant term.

    Raises
    ------
    ValueError
        On wrong shapes, non-finite values or a non-symmetric ``M``.

    """

    alpha: FloatArray
    M: FloatArray
    c: float = 0.0

    def __post_init__(self) -> None:
        alpha = np.array(self.alpha, dtype=np.float64).reshape(-1)
        m = np.array(self.M, dtype=np.float64)
        d = alpha.shape[0]
        if d < 1 or m.shape != (d, d):
            raise ValueError(f"objective.M must have shape ({d}, {d}) for d={d}, got {m.shape}")
        if not (np.isfinite(alpha).all() and np.isfinite(m).all() and math.isfinite(self.c)):
            raise ValueError("objective coefficients must be finite, got NaN or inf")
        scale = max(1.0, float(np.abs(m).max()))
        if not np.allclose(m, m.T, rtol=0.0, atol=1e-9 * scale):
            raise ValueError("objective.M must be symmetric, got an asymmetric matrix")
        m = (m + m.T) / 2.0
        alpha.setflags(write=False)
        m.setflags(write=False)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "M", m)
        object.__setattr__(self, "c", float(self.c))

    @property
    def dim(self) -> int:
        """Number of weights ``d``."""
        return int(self.alpha.shape[0])

    @staticmethod
    def num_coefficients(d: int) -> int:
        """Number of distinct monomials of degree <= 2 in ``d`` weights: ``1 + d + d(d+1)/2``."""
        d = _check_dim(d)
        return 1 + d + d * (d + 1) // 2

    def coefficients(self) -> FloatArray:
        """Coefficient vector over distinct monomials: ``[c, alpha, diag(M), 2 M_jk (j<k)]``.

        The off-diagonal block is the upper triangle in row-major order. This is the vector
        whose L1 sensitivity is :func:`linear_sensitivity` / :func:`logistic_sensitivity`
        and on which the functional mechanism adds Laplace noise (FM Algorithm 1).
        """
        j, k = np.triu_indices(self.dim, k=1)
        return np.concatenate([[self.c], self.alpha, np.diag(self.M), 2.0 * self.M[j, k]])

    def released_coefficients(self) -> FloatArray:
        """:meth:`coefficients` without the constant: ``[alpha, diag(M), 2 M_jk (j<k)]``.

        What the functional mechanism perturbs and releases. The constant ``c`` does not
        change the minimiser, so it is left out of the release (the released objective has
        ``c = 0``) and out of the ``"l2"`` sensitivities; the paper's bounds still count it,
        so they remain valid (and loose) for this vector.
        """
        return self.coefficients()[1:]

    @classmethod
    def from_released(cls, coef: npt.ArrayLike, d: int) -> QuadraticObjective:
        """Inverse of :meth:`released_coefficients`, with constant ``c = 0``."""
        vec = np.asarray(coef, dtype=np.float64).reshape(-1)
        return cls.from_coefficients(np.concatenate([[0.0], vec]), d)

    @classmethod
    def from_coefficients(cls, coef: npt.ArrayLike, d: int) -> QuadraticObjective:
        """Inverse of :meth:`coefficients` (``2 M_jk`` is split back into ``M_jk = M_kj``)."""
        vec = np.asarray(coef, dtype=np.float64).reshape(-1)
        if vec.shape[0] != cls.num_coefficients(d):
            raise ValueError(
                f"coefficient vector for d={d} must have length {cls.num_coefficients(d)}, "
                f"got {vec.shape[0]}"
            )
        m = np.diag(vec[1 + d : 1 + 2 * d])
        j, k = np.triu_indices(d, k=1)
        m[j, k] = vec[1 + 2 * d :] / 2.0
        m[k, j] = m[j, k]
        return cls(alpha=vec[1 : 1 + d].copy(), M=m, c=float(vec[0]))

    def value(self, w: npt.ArrayLike) -> float:
        """``f(w) = c + alpha^T w + w^T M w``."""
        v = np.asarray(w, dtype=np.float64).reshape(-1)
        return float(self.c + self.alpha @ v + v @ self.M @ v)

    def gradient(self, w: npt.ArrayLike) -> FloatArray:
        """``grad f(w) = alpha + 2 M w``."""
        return self.alpha + 2.0 * self.M @ np.asarray(w, dtype=np.float64).reshape(-1)

    def __add__(self, other: QuadraticObjective) -> QuadraticObjective:
        """Sum of two objectives over the same weights (objectives are sums over records)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot add objectives of dimension {self.dim} and {other.dim}")
        return QuadraticObjective(self.alpha + other.alpha, self.M + other.M, self.c + other.c)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form ``{"alpha": [...], "M": [[...]], "c": float}`` (exact round trip)."""
        return {"alpha": self.alpha.tolist(), "M": self.M.tolist(), "c": self.c}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuadraticObjective:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(alpha=data["alpha"], M=data["M"], c=data.get("c", 0.0))
        except KeyError as err:
            raise ValueError(
                f"objective dict must have keys 'alpha' and 'M', missing {err}"
            ) from None


def _check_records(x: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"features must have shape (n, d) with n, d >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("features must be finite, got NaN or inf")
    worst = float(np.linalg.norm(arr, axis=1).max())
    if worst > 1.0 + _NORM_TOL:
        raise ValueError(
            "every record must satisfy ||x||_2 <= 1 (normalise with FeatureBounds), "
            f"got a row of norm {worst:.6g}"
        )
    return arr


def _check_labels(y: npt.ArrayLike, n: int) -> FloatArray:
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"labels must have {n} entries (one per record), got {arr.shape[0]}")
    return arr


def linear_regression_objective(x: npt.ArrayLike, y: npt.ArrayLike) -> QuadraticObjective:
    """``sum_i (y_i - x_i^T w)^2`` as a quadratic (FM Section 4).

    ``c = sum_i y_i^2``, ``alpha = -2 sum_i y_i x_i``, ``M = sum_i x_i x_i^T``.
    Sensitivity :func:`linear_sensitivity` ``= 2 (d+1)^2``, valid for ``||x_i||_2 <= 1``
    and ``y_i in [-1, 1]`` (both checked here).
    """
    xs = _check_records(x)
    ys = _check_labels(y, xs.shape[0])
    if not (np.isfinite(ys).all() and np.abs(ys).max() <= 1.0):
        raise ValueError(
            "linear regression needs targets in [-1, 1] (map them with TargetBounds), "
            f"got range [{ys.min():.6g}, {ys.max():.6g}]"
        )
    return QuadraticObjective(alpha=-2.0 * xs.T @ ys, M=xs.T @ xs, c=float(ys @ ys))


def logistic_regression_objective(x: npt.ArrayLike, y: npt.ArrayLike) -> QuadraticObjective:
    """Second-order Taylor expansion of the logistic loss at ``w = 0`` (FM Section 5).

    The loss is ``sum_i log(1 + e^{x_i^T w}) - y_i x_i^T w``.

    ``log(1 + e^z) ~ log 2 + z/2 + z^2/8``, so ``c = n log 2``,
    ``alpha = sum_i (1/2 - y_i) x_i`` and ``M = (1/8) sum_i x_i x_i^T``.
    Sensitivity :func:`logistic_sensitivity` ``= d^2/4 + 3d``, valid for
    ``||x_i||_2 <= 1`` and ``y_i in {0, 1}`` (both checked here).
    """
    xs = _check_records(x)
    ys = _check_labels(y, xs.shape[0])
    if not np.isin(ys, (0.0, 1.0)).all():
        raise ValueError(f"logistic regression needs labels in {{0, 1}}, got {np.unique(ys)[:5]}")
    n = xs.shape[0]
    return QuadraticObjective(alpha=xs.T @ (0.5 - ys), M=xs.T @ xs / 8.0, c=n * math.log(2.0))


def stabilise(
    objective: QuadraticObjective, ridge: float = 0.0, trim: bool = True
) -> QuadraticObjective:
    """Make a (noisy) objective strongly convex: spectral trimming + regularisation (FM Sec. 6).

    Noise can make ``M`` indefinite, so ``f`` is unbounded below. FM Section 6 proposes
    regularisation (a ridge ``ridge * ||w||^2``) and spectral trimming: with
    ``M = Q diag(lambda) Q^T``, directions with ``lambda_k <= tol`` (non-positive up to
    rounding) are removed, so the minimiser has no component along them. Here trimming is
    applied first and the ridge is then added to the kept eigenvalues, so every kept
    curvature is ``>= ridge`` and ``||w*|| <= ||alpha|| / (2 ridge)``: a tiny positive noisy
    eigenvalue cannot blow the minimiser up. Trimmed directions are kept with a positive
    curvature (the smallest kept one) and ``alpha``'s component along them set to 0, which
    has the same minimiser as removing them and lets :func:`gradient_steps` converge to it
    from any start. Post-processing of the released objective: no privacy cost.

    Parameters
    ----------
    objective : QuadraticObjective
        The (noisy) objective to stabilise.
    ridge : float, default 0.0
        Added to every kept eigenvalue, ``>= 0``.
    trim : bool, default True
        If ``False``, only add the ridge, and raise when ``M + ridge I`` is not positive
        definite.

    Returns
    -------
    QuadraticObjective
        Same ``c``; ``M`` positive definite.

    """
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    lam, q = np.linalg.eigh(objective.M)
    tol = max(float(np.abs(lam).max()), ridge, 1e-300) * objective.dim * 1e-12
    if not trim:
        if lam[0] + ridge <= tol:
            raise ValueError(
                f"objective is unbounded below: M + ridge*I has eigenvalue {lam[0] + ridge:.6g} "
                f"<= 0 (ridge={ridge}); use trim=True or a larger ridge"
            )
        return QuadraticObjective(
            objective.alpha, objective.M + ridge * np.eye(objective.dim), objective.c
        )
    keep = lam > tol
    coords = q.T @ objective.alpha
    coords[~keep] = 0.0
    lam = lam + ridge
    lam = np.where(keep, lam, float(lam[keep].min()) if keep.any() else max(ridge, 1.0))
    return QuadraticObjective(alpha=q @ coords, M=(q * lam) @ q.T, c=objective.c)


def minimise(objective: QuadraticObjective, ridge: float = 0.0, trim: bool = True) -> FloatArray:
    """Closed-form minimiser ``w* = -1/2 M^+ alpha`` of the stabilised objective (FM Sec. 6).

    Applies :func:`stabilise` (spectral trimming of non-positive eigenvalues, then the
    ridge) and solves in the eigenbasis, so the result is always finite when ``trim`` is ``True``.
    Post-processing of the released objective: no privacy cost.
    """
    stable = stabilise(objective, ridge=ridge, trim=trim)
    lam, q = np.linalg.eigh(stable.M)
    lam = np.maximum(lam, np.finfo(np.float64).tiny)
    return -0.5 * (q @ ((q.T @ stable.alpha) / lam))


def gradient_steps(
    objective: QuadraticObjective, w0: npt.ArrayLike, lr: float | None = None, steps: int = 10
) -> FloatArray:
    """``steps`` gradient-descent steps ``w <- w - lr (alpha + 2 M w)`` from ``w0``.

    For a federated client that starts every round from the global weights and moves
    towards the minimiser of its (once-perturbed) objective. Pass a convex objective, e.g.
    ``stabilise(noisy, ridge)``; ``ValueError`` if ``M`` has a negative eigenvalue (gradient
    descent would diverge). ``lr=None`` uses ``1 / (lambda_max + lambda_min)`` of ``M``, the
    optimal constant step for a quadratic (contraction ``(kappa - 1) / (kappa + 1)``).
    Post-processing: no privacy cost.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    w = np.array(w0, dtype=np.float64).reshape(-1)
    if w.shape[0] != objective.dim:
        raise ValueError(f"w0 must have {objective.dim} entries, got {w.shape[0]}")
    lam = np.linalg.eigvalsh(objective.M)
    if lam[0] < -1e-12 * max(abs(lam[-1]), 1.0):
        raise ValueError(
            f"gradient_steps needs a convex objective, got M with eigenvalue {lam[0]:.6g}; "
            "pass stabilise(objective, ridge)"
        )
    if lr is None:
        if lam[-1] <= 0:
            return w
        lr = 1.0 / (lam[-1] + max(lam[0], 0.0))
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr}")
    for _ in range(steps):
        w = w - lr * objective.gradient(w)
    return w
