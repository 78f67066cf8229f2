"""One functional-mechanism release for all classes: the softmax cross-entropy to second order.

Zhang, Zhang, Xiao, Yang, Winslett, "Functional Mechanism: Regression Analysis under
Differential Privacy", PVLDB 5(11), 2012 (FM), Algorithm 1, applied to the multinomial
logistic (softmax) loss instead of ``K`` one-vs-rest logistic losses.

The expansion
    For a record ``(x, y)`` (``x`` in ``R^d``, ``y`` in ``0..K-1``) and weights ``W`` (``K x d``),
    logits ``z = W x``, the loss ``-z_y + log sum_k exp(z_k)`` expanded to second order at
    ``z = 0`` is ``log K + (1/K 1 - e_y)^T W x + (1/2) x^T W^T H W x`` with the fixed
    ``K x K`` matrix ``H = (1/K)(I - 1 1^T / K)`` (the softmax Hessian at zero logits). Summed
    over the records, with ``B = sum_i e_{y_i} x_i^T`` (``K x d``: each class's feature sum)
    and ``S = sum_i x_i x_i^T`` (``d x d``, the Gram matrix)::

        F(W) = n log K + <(1/K) 1 (B^T 1)^T - B, W> + (1/2) tr(H W S W^T)

    (``sum_i x_i = B^T 1``, as every record lies in exactly one class). So ``F`` is a function
    of ``(B, S)`` alone: the quadratic term does not depend on the labels and is released once
    (``S``, upper triangle only, since it is symmetric); the label-dependent linear term is
    ``B``, released once for all classes. The constant ``n log K`` is public (``n`` is public
    under replace-one) and does not move the minimiser.

The minimiser
    ``grad F = (1/K) 1 s^T - B + H W S = 0`` gives ``W* = K P B S^{-1}`` with the centring
    ``P = I - 1 1^T / K`` (the minimum-norm solution; adding the same row to every class
    changes no softmax). Its argmax is that of ``B S^{-1} x``: the least-squares classifier on
    the features (one-hot targets), as the issue's back-of-envelope check says. With the
    noisy release the solver trims the non-positive eigenvalues of ``S~`` and adds a ridge
    (FM Section 6): post-processing.

Sensitivity (replace-one, ``n`` public; rows with ``||x||_2 <= 1``, so ``||x||_1 <= sqrt d``)
    Replacing ``(x, y)`` by ``(x', y')`` changes ``B`` by ``e_y x^T - e_{y'} x'^T`` and ``S`` by
    ``x x^T - x' x'^T``.

    * L1, released vector ``[B, triu(S)]`` (:func:`softmax_sensitivity`):
      ``||dB||_1 <= ||x||_1 + ||x'||_1 <= 2 sqrt d`` (one row changes when ``y = y'``, two
      rows otherwise; both cases are bounded by the two norms), and
      ``||d triu(S)||_1 <= sum_{j<=k} (|x_j x_k| + |x'_j x'_k|) = (||x||_1^2 + ||x||_2^2)/2 +
      (same for x') <= d + 1``. So ``Delta_1 = 2 sqrt d + d + 1``: **no K** (the one-vs-rest
      release spent ``epsilon / K`` per class, i.e. ``K`` times the noise).
    * L2 (:func:`softmax_sensitivity_l2`): with ``t = x^T x'``, ``||d triu(S)||_2 <=
      ||dS||_F``, ``||dS||_F^2 = ||x||^4 + ||x'||^4 - 2 t^2`` and ``||dB||_F^2 = ||x - x'||^2 <=
      2 - 2t`` (``y = y'``) or ``||x||^2 + ||x'||^2 <= 2`` (``y != y'``). The sum is at most
      ``4 - 2t - 2t^2 <= 9/2`` (at ``t = -1/2``), resp. ``4``, so ``Delta_2 = 3 / sqrt 2``:
      neither ``d`` nor ``K``. The Gaussian (epsilon, delta) variant
      (:class:`SoftmaxGaussianMechanism`, ``privacy.functional_noise=gaussian``) uses it; the
      Laplace mechanism uses ``Delta_1``.

    A property test (``tests/privacy/test_functional_softmax.py``) checks both on thousands of
    random and adversarial neighbouring datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privacy.functional.noise import GAUSSIAN
from privacy.functional.objective import _check_dim, _check_records
from privacy.laplace import IntegerSource, SnappedLaplace
from privacy.ledger import Event, PureDpEvent

__all__ = [
    "SoftmaxGaussianMechanism",
    "SoftmaxMechanism",
    "SoftmaxStatistics",
    "softmax_ridge",
    "softmax_sensitivity",
    "softmax_sensitivity_l2",
    "solve_softmax",
]

FloatArray = npt.NDArray[np.float64]


def softmax_sensitivity(d: int) -> float:
    """L1 sensitivity of the released ``[B, triu(S)]``: ``2 sqrt(d) + d + 1``, for any ``K``.

    Derivation in the module docstring: ``2 sqrt d`` for the class sums (each record adds
    ``x`` to one row, ``||x||_1 <= sqrt d``), ``d + 1`` for the Gram matrix's upper triangle
    (``(||x||_1^2 + ||x||_2^2) / 2 <= (d + 1) / 2`` per record, twice under replace-one).
    """
    d = _check_dim(d)
    return 2.0 * math.sqrt(d) + d + 1.0


def softmax_sensitivity_l2(d: int) -> float:
    """L2 sensitivity of the released ``[B, triu(S)]``: ``3 / sqrt(2)``, for any ``d`` and ``K``.

    Derivation in the module docstring (``||dB||^2 + ||dS||_F^2 <= 4 - 2t - 2t^2 <= 9/2``).
    ``d`` is checked only, so that both sensitivities share a signature.
    """
    _check_dim(d)
    return 3.0 / math.sqrt(2.0)


def _triu(d: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    return np.triu_indices(d)


@dataclass(frozen=True)
class SoftmaxStatistics:
    """The two statistics the softmax expansion depends on: class sums ``B`` and Gram ``S``.

    Attributes
    ----------
    class_sums : numpy.ndarray of shape (K, d)
        ``B[k] = sum of the records of class k``.
    gram : numpy.ndarray of shape (d, d)
        ``S = sum_i x_i x_i^T``, symmetric (symmetrised exactly on construction).

    Raises
    ------
    ValueError
        On wrong shapes (``K >= 2``), non-finite values or an asymmetric ``gram``.

    """

    class_sums: FloatArray
    gram: FloatArray

    def __post_init__(self) -> None:
        b = np.array(self.class_sums, dtype=np.float64)
        s = np.array(self.gram, dtype=np.float64)
        if b.ndim != 2 or b.shape[0] < 2 or b.shape[1] < 1:
            raise ValueError(f"softmax class_sums must have shape (K>=2, d>=1), got {b.shape}")
        d = b.shape[1]
        if s.shape != (d, d):
            raise ValueError(f"softmax gram must have shape ({d}, {d}), got {s.shape}")
        if not (np.isfinite(b).all() and np.isfinite(s).all()):
            raise ValueError("softmax statistics must be finite, got NaN or inf")
        scale = max(1.0, float(np.abs(s).max()))
        if not np.allclose(s, s.T, rtol=0.0, atol=1e-9 * scale):
            raise ValueError("softmax gram must be symmetric, got an asymmetric matrix")
        s = (s + s.T) / 2.0
        b.setflags(write=False)
        s.setflags(write=False)
        object.__setattr__(self, "class_sums", b)
        object.__setattr__(self, "gram", s)

    @property
    def classes(self) -> int:
        """``K``."""
        return int(self.class_sums.shape[0])

    @property
    def dim(self) -> int:
        """``d``."""
        return int(self.class_sums.shape[1])

    @classmethod
    def from_records(
        cls, x: npt.ArrayLike, labels: npt.ArrayLike, classes: int
    ) -> SoftmaxStatistics:
        """Exact statistics of records with ``||x||_2 <= 1`` and labels in ``0..classes-1``."""
        xs = _check_records(x)
        if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
            raise ValueError(f"dataset.num_classes must be an int >= 2, got {classes!r}")
        y = np.asarray(labels).reshape(-1)
        if y.shape[0] != xs.shape[0]:
            raise ValueError(f"labels must have {xs.shape[0]} entries, got {y.shape[0]}")
        if not np.isin(y, np.arange(classes)).all():
            raise ValueError(f"labels must be in 0..{classes - 1}, got {np.unique(y)[:5]}")
        # Each class summed on its own: replacing a record leaves the other rows bit-identical.
        sums = np.stack([xs[y == k].sum(axis=0) for k in range(int(classes))])
        return cls(class_sums=sums, gram=xs.T @ xs)

    @staticmethod
    def num_released(classes: int, d: int) -> int:
        """Length of :meth:`released`: ``K d + d (d + 1) / 2``."""
        d = _check_dim(d)
        return int(classes) * d + d * (d + 1) // 2

    def released(self) -> FloatArray:
        """The vector the mechanism perturbs: ``[B (row-major), upper triangle of S]``."""
        return np.concatenate([self.class_sums.ravel(), self.gram[_triu(self.dim)]])

    @classmethod
    def from_released(cls, vec: npt.ArrayLike, classes: int, d: int) -> SoftmaxStatistics:
        """Inverse of :meth:`released` (the upper triangle is mirrored)."""
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        if v.shape[0] != cls.num_released(classes, d):
            raise ValueError(
                f"softmax release for K={classes}, d={d} must have length "
                f"{cls.num_released(classes, d)}, got {v.shape[0]}"
            )
        s = np.zeros((d, d))
        j, k = _triu(d)
        s[j, k] = v[classes * d :]
        s[k, j] = v[classes * d :]
        return cls(class_sums=v[: classes * d].reshape(classes, d), gram=s)

    def scaled(self, a: float) -> SoftmaxStatistics:
        """``a (B, S)``: a client's objective weighted by a reliability scorer (``a >= 0``)."""
        return SoftmaxStatistics(a * self.class_sums, a * self.gram)

    def __add__(self, other: SoftmaxStatistics) -> SoftmaxStatistics:
        """Statistics of the union of two datasets (both are sums over records)."""
        if (other.classes, other.dim) != (self.classes, self.dim):
            raise ValueError(
                f"cannot add softmax statistics of shape (K={self.classes}, d={self.dim}) and "
                f"(K={other.classes}, d={other.dim})"
            )
        return SoftmaxStatistics(self.class_sums + other.class_sums, self.gram + other.gram)

    def to_arrays(self) -> dict[str, FloatArray]:
        """Wire form ``{"class_sums": (K, d), "gram": (d, d)}``; exact round trip."""
        return {"class_sums": np.array(self.class_sums), "gram": np.array(self.gram)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SoftmaxStatistics:
        """Inverse of :meth:`to_arrays`; ``ValueError`` names a missing array."""
        missing = {"class_sums", "gram"} - set(arrays)
        if missing:
            raise ValueError(
                f"softmax release must have arrays class_sums, gram; missing {sorted(missing)}"
            )
        return cls(class_sums=arrays["class_sums"], gram=arrays["gram"])

    def value(self, w: npt.ArrayLike) -> float:
        """The expansion ``F(W) - n log K`` (its constant is not released)."""
        weights = np.asarray(w, dtype=np.float64)
        k = self.classes
        s_sum = self.class_sums.sum(axis=0)
        linear = float(np.sum((np.outer(np.ones(k), s_sum) / k - self.class_sums) * weights))
        h = (np.eye(k) - np.ones((k, k)) / k) / k
        return linear + 0.5 * float(np.trace(h @ weights @ self.gram @ weights.T))

    def minimiser(self, ridge: float = 0.0) -> FloatArray:
        """``W = K P B (S_+ + ridge I)^{-1}`` (``K x d``), after trimming ``S`` (FM Sec. 6).

        Eigenvalues of ``S`` at or below a rounding tolerance are trimmed (their directions
        get no weight), the ridge is added to the kept ones: the minimiser of the stabilised
        expansion. Post-processing of the released statistics: no privacy cost.
        """
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        lam, q = np.linalg.eigh(self.gram)
        tol = max(float(np.abs(lam).max()), ridge, 1e-300) * self.dim * 1e-12
        keep = lam > tol
        inv = np.where(keep, 1.0 / np.where(keep, lam + ridge, 1.0), 0.0)
        k = self.classes
        centred = self.class_sums - self.class_sums.mean(axis=0, keepdims=True)  # P B
        return float(k) * (centred @ (q * inv) @ q.T)


def softmax_ridge(noise_scale: float, d: int, weights: npt.ArrayLike | None = None) -> float:
    """Ridge for a weighted sum of released Gram matrices: ``b sqrt(d sum_i a_i^2)``.

    The summed noise on each entry of ``S`` has standard deviation ``b sqrt(2 sum a_i^2)``;
    a symmetric ``d x d`` matrix of such noise has spectral norm of order
    ``b sqrt(d sum a_i^2)`` (as :func:`privacy.functional.aggregate.summed_noise_ridge`).
    Public quantities only.
    """
    a = np.ones(1) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    return float(noise_scale * math.sqrt(_check_dim(d) * float(np.sum(a * a))))


def solve_softmax(
    releases: Sequence[SoftmaxStatistics],
    noise_scale: float,
    weights: npt.ArrayLike | None = None,
) -> FloatArray:
    """Head ``W`` (``K x d``) minimising the weighted sum of released expansions, ridged once.

    Parameters
    ----------
    releases : sequence of SoftmaxStatistics
        The clients' noisy releases.
    noise_scale : float
        The Laplace scale each client used (public, :meth:`SoftmaxMechanism.noise_scale`).
    weights : array_like or None
        ``a_i >= 0`` (default all 1: the objective of the union of the data).

    """
    if not releases:
        raise ValueError("softmax releases must not be empty")
    a = np.ones(len(releases)) if weights is None else np.asarray(weights, dtype=np.float64)
    if a.shape != (len(releases),) or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"weights must be {len(releases)} finite numbers >= 0, got {a.tolist()}")
    total = releases[0].scaled(float(a[0]))
    for ai, r in zip(a[1:], releases[1:], strict=True):
        total = total + r.scaled(float(ai))
    return total.minimiser(ridge=softmax_ridge(noise_scale, total.dim, a))


@dataclass(frozen=True)
class SoftmaxMechanism:
    """FM Algorithm 1 on the softmax expansion: one ``epsilon``-DP release for all ``K`` classes.

    ``perturb`` releases ``[B, triu(S)]`` with the snapped Laplace mechanism
    (:class:`privacy.laplace.SnappedLaplace`, exact discrete Laplace on a power-of-two grid)
    of scale ``Delta_1(d) / epsilon``, ``Delta_1 = 2 sqrt(d) + d + 1``
    (:func:`softmax_sensitivity`, replace-one, ``n`` public, rows in the L2 unit ball). The
    scale does not depend on ``K``. One release is one :class:`PureDpEvent` of ``epsilon``.

    Attributes
    ----------
    epsilon : float
        Privacy parameter, finite and ``> 0``.

    """

    epsilon: float

    def __post_init__(self) -> None:
        e = self.epsilon
        if isinstance(e, bool) or not (isinstance(e, (int, float)) and math.isfinite(e) and e > 0):
            raise ValueError(f"privacy.target_epsilon must be a finite number > 0, got {e!r}")

    def sensitivity(self, d: int) -> float:
        """``Delta_1(d)`` (no dependence on the number of classes)."""
        return softmax_sensitivity(d)

    def snapped(self, classes: int, d: int) -> SnappedLaplace:
        """The snapped Laplace mechanism of one release.

        Replacing one record changes two rows of ``B`` and the ``d (d + 1) / 2`` entries of
        ``triu(S)``; the other ``K - 2`` rows are the same sums over the same records
        (:meth:`SoftmaxStatistics.from_records` sums each class on its own), so only
        ``2 d + d (d + 1) / 2`` coordinates add rounding (``changed``): the grid and the noise
        scale do not depend on ``K``.
        """
        return SnappedLaplace(
            epsilon=float(self.epsilon),
            sensitivity=self.sensitivity(d),
            dim=SoftmaxStatistics.num_released(classes, d),
            changed=SoftmaxStatistics.num_released(2, d),
        )

    def noise_scale(self, d: int) -> float:
        """Laplace scale of every released coefficient, snapping included: about ``Delta_1/eps``.

        The same for every number of classes ``K`` (see :meth:`snapped`).
        """
        return self.snapped(2, d).noise_scale

    def perturb(self, stats: SoftmaxStatistics, source: IntegerSource) -> SoftmaxStatistics:
        """Release ``stats`` once, ``epsilon``-DP; the result's ``S`` is symmetric."""
        if not callable(getattr(source, "randbelow", None)):
            raise TypeError(
                "source must be an integer source with randbelow (see make_noise_generator), "
                f"got {type(source).__name__}"
            )
        noisy = self.snapped(stats.classes, stats.dim).release(stats.released(), source)
        return SoftmaxStatistics.from_released(noisy, stats.classes, stats.dim)

    def event(self, round: int = 0) -> PureDpEvent:  # noqa: A002 - matches PureDpEvent.round
        """The ledger event of one release: ``PureDpEvent(epsilon, round, "functional")``."""
        return PureDpEvent(epsilon=float(self.epsilon), round=round, mechanism="functional")


@dataclass(frozen=True)
class SoftmaxGaussianMechanism:
    """The softmax release with Gaussian noise: ``(epsilon, delta)``-DP for all ``K`` classes.

    ``perturb`` adds ``N(0, sigma^2)`` to every entry of ``[B, triu(S)]``, ``sigma`` the
    analytic Gaussian mechanism's (Balle and Wang 2018) for ``(epsilon, delta)`` at the L2
    sensitivity ``Delta_2 = 3 / sqrt(2)`` (:func:`softmax_sensitivity_l2`, replace-one, ``n``
    public, rows in the L2 unit ball): neither ``d`` nor ``K`` moves it, where the Laplace
    scale grows as ``d``. How it is drawn (floating point, secure seed) and why the ledger
    event is ``SampledGaussianEvent(2 sigma / Delta_2, 1.0, 1)``:
    :mod:`privacy.functional.noise`.

    Attributes
    ----------
    epsilon : float
        Privacy parameter, finite and ``> 0``.
    delta : float
        ``privacy.delta``, in ``(0, 1)``.

    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        SoftmaxMechanism(self.epsilon)  # the same epsilon check
        GAUSSIAN.sigma(self.epsilon, self.delta, softmax_sensitivity_l2(1))  # delta check

    def sigma(self, d: int) -> float:
        """Standard deviation of every released coefficient's noise (no ``d`` or ``K``)."""
        return GAUSSIAN.sigma(self.epsilon, self.delta, softmax_sensitivity_l2(d))

    def noise_scale(self, d: int) -> float:
        """``sigma / sqrt(2)``: the Laplace scale with the same std, which the ridge reads."""
        return GAUSSIAN.scale(self.epsilon, self.delta, softmax_sensitivity_l2(d))

    def perturb(self, stats: SoftmaxStatistics, source: IntegerSource) -> SoftmaxStatistics:
        """Release ``stats`` once, ``(epsilon, delta)``-DP; the result's ``S`` is symmetric."""
        noisy = GAUSSIAN.draw(
            stats.released(), self.epsilon, self.delta, softmax_sensitivity_l2(stats.dim), source
        )
        return SoftmaxStatistics.from_released(noisy, stats.classes, stats.dim)

    def event(self, round: int = 0) -> Event:  # noqa: A002 - matches PureDpEvent.round
        """The ledger event of one release (see :mod:`privacy.functional.noise`); no ``d``."""
        return GAUSSIAN.event(self.epsilon, self.delta, softmax_sensitivity_l2(1), round)
