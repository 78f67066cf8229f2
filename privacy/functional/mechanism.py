"""The functional mechanism: Laplace noise on the coefficients of a polynomial objective.

Zhang, Zhang, Xiao, Yang, Winslett, "Functional Mechanism: Regression Analysis under
Differential Privacy", PVLDB 5(11), 2012 (FM). Algorithm 1: write the training objective
as a polynomial in the weights, add ``Laplace(Delta / epsilon)`` noise once to every
coefficient, and release the noisy objective. By FM Lemma 1 / Theorem 1 (the Laplace
mechanism on a vector of L1 sensitivity ``Delta``) the released objective is
``epsilon``-DP (pure, ``delta = 0``) for the whole dataset; minimising it, any number of
times and from any starting point, is post-processing.

The Laplace noise is not sampled in floating point, which Mironov's (2012) least-significant
bit attack defeats: the coefficients are snapped to a power-of-two grid and the noise is an
exact discrete Laplace draw on that grid from an integer source
(:class:`privacy.laplace.SnappedLaplace`; the grid's rounding is paid for in the sensitivity,
about 1%). The source is the OS's CSPRNG unless a user asks for reproducible noise.

Neighbouring datasets differ in one record (replaced), as in FM; the sensitivities used
also cover adding/removing one record (see :mod:`privacy.functional.objective`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privacy.functional.bounds import FeatureBounds, TargetBounds
from privacy.functional.objective import (
    QuadraticObjective,
    linear_regression_objective,
    linear_sensitivity,
    linear_sensitivity_l2,
    logistic_regression_objective,
    logistic_sensitivity,
    logistic_sensitivity_l2,
    minimise,
)
from privacy.laplace import IntegerSource, SeededSource, SnappedLaplace, make_source
from privacy.ledger import PureDpEvent

__all__ = [
    "OBJECTIVES",
    "SENSITIVITY_BOUNDS",
    "FunctionalMechanism",
    "ObjectiveKind",
    "fit_private",
    "make_noise_generator",
    "register_objective",
]

FloatArray = npt.NDArray[np.float64]
SENSITIVITY_BOUNDS = ("paper", "l2")


def make_noise_generator(seed: int | None, *, secure: bool = False) -> IntegerSource:
    """The integer source that draws the functional mechanism's noise.

    Parameters
    ----------
    seed : int or None
        Seed; required unless ``secure``.
    secure : bool, default False
        Draw from the OS's CSPRNG (:class:`privacy.laplace.SecureSource`), the setting every
        privacy mode uses unless ``privacy.reproducible_noise``; the seed is then ignored.
        ``False`` gives a :class:`privacy.laplace.SeededSource`: reproducible, and **no
        guarantee** against anyone who knows the seed.

    """
    if secure:
        return make_source(None, reproducible=False)
    if seed is None:
        raise ValueError("privacy.seed must be set when secure mode is off, got None")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"privacy.seed must be a non-negative int, got {seed!r}")
    return SeededSource(seed)


@dataclass(frozen=True)
class ObjectiveKind:
    """A registered objective: its builder and its L1 sensitivities.

    Attributes
    ----------
    name : str
        Registry key (``FunctionalMechanism.kind``).
    build : callable
        ``(x, y) -> QuadraticObjective`` on normalised records.
    sensitivities : mapping of str to callable
        For each name in :data:`SENSITIVITY_BOUNDS`, ``d -> Delta``: an upper bound on the
        L1 change of ``released_coefficients()`` when one record is replaced, for records in the L2
        unit ball. ``"paper"``: FM's published bound; ``"l2"``: the bound derived with
        ``||x||_1 <= sqrt(d)`` from the enforced L2 normalisation (tighter, same guarantee).

    """

    name: str
    build: Callable[[npt.ArrayLike, npt.ArrayLike], QuadraticObjective]
    sensitivities: Mapping[str, Callable[[int], float]]

    def __post_init__(self) -> None:
        if set(self.sensitivities) != set(SENSITIVITY_BOUNDS):
            raise ValueError(
                f"objective {self.name!r} must define sensitivities {SENSITIVITY_BOUNDS}, "
                f"got {sorted(self.sensitivities)}"
            )


OBJECTIVES: dict[str, ObjectiveKind] = {}


def register_objective(kind: ObjectiveKind) -> ObjectiveKind:
    """Add ``kind`` to :data:`OBJECTIVES` under ``kind.name``."""
    OBJECTIVES[kind.name] = kind
    return kind


register_objective(
    ObjectiveKind(
        "linear",
        linear_regression_objective,
        {"paper": linear_sensitivity, "l2": linear_sensitivity_l2},
    )
)
register_objective(
    ObjectiveKind(
        "logistic",
        logistic_regression_objective,
        {"paper": logistic_sensitivity, "l2": logistic_sensitivity_l2},
    )
)


@dataclass(frozen=True)
class FunctionalMechanism:
    """FM Algorithm 1 for one registered objective kind at privacy level ``epsilon``.

    ``perturb`` adds i.i.d. ``Laplace(0, b)`` with scale ``b = Delta(d) / epsilon`` (density
    ``exp(-|z|/b) / 2b``, variance ``2 b^2``) to every entry of
    :meth:`QuadraticObjective.released_coefficients`, i.e. to each ``alpha_j``, each ``M_jj``
    and each monomial coefficient ``2 M_jk`` (``j < k``, split back as ``M_jk = M_kj``, so
    ``M`` stays symmetric). The constant ``c`` is not released (``c = 0`` in the result): it
    does not move the minimiser, and FM's noise on it was budget spent for nothing.
    ``Delta`` is ``2 (d+1)^2`` for ``"linear"`` (FM Sec. 4) and ``d^2/4 + 3d`` for
    ``"logistic"`` (FM Sec. 5), for records normalised by :class:`FeatureBounds` (they count
    the constant, so they stay valid); with ``bound="l2"`` the tighter ``2 (2 sqrt d + d)``
    and ``sqrt(d) + d/4`` derived from the same enforced normalisation for the released
    coefficients (:func:`linear_sensitivity_l2`, :func:`logistic_sensitivity_l2`). Draw it
    once per dataset: the result is ``epsilon``-DP and everything computed from it is free.

    Attributes
    ----------
    epsilon : float
        Privacy parameter, ``> 0``.
    kind : str, default "logistic"
        A key of :data:`OBJECTIVES`.
    bound : {"paper", "l2"}, default "paper"
        Which sensitivity bound sets the noise scale.

    """

    epsilon: float
    kind: str = "logistic"
    bound: str = "paper"

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not (
            isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon)
        ):
            raise ValueError(f"privacy.epsilon must be a finite number > 0, got {self.epsilon!r}")
        if self.epsilon <= 0:
            raise ValueError(f"privacy.epsilon must be > 0, got {self.epsilon}")
        if self.kind not in OBJECTIVES:
            raise ValueError(
                f"privacy.functional_kind must be one of {sorted(OBJECTIVES)}, got {self.kind!r}"
            )
        if self.bound not in SENSITIVITY_BOUNDS:
            raise ValueError(
                f"privacy.functional_bound must be one of {SENSITIVITY_BOUNDS}, got {self.bound!r}"
            )

    def sensitivity(self, d: int) -> float:
        """``Delta(d)`` of this kind (see the class docstring)."""
        return OBJECTIVES[self.kind].sensitivities[self.bound](d)

    def noise_scale(self, d: int) -> float:
        """Laplace scale ``b = Delta(d) / epsilon`` (not its inverse)."""
        return self.sensitivity(d) / self.epsilon

    def objective(self, x: npt.ArrayLike, y: npt.ArrayLike) -> QuadraticObjective:
        """Exact (non-private) objective of this kind on normalised records."""
        return OBJECTIVES[self.kind].build(x, y)

    def snapped(self, d: int, size: int) -> SnappedLaplace:
        """The snapped Laplace mechanism releasing ``size`` coefficients of dimension ``d``."""
        return SnappedLaplace(
            epsilon=float(self.epsilon), sensitivity=self.sensitivity(d), dim=size
        )

    def perturb(
        self, objective: QuadraticObjective, generator: IntegerSource
    ) -> QuadraticObjective:
        """Release ``objective`` with Laplace noise of scale ``Delta/epsilon`` (snapped), once.

        Parameters
        ----------
        objective : QuadraticObjective
            Built by :meth:`objective` (or the registered builder) on normalised records.
        generator : IntegerSource
            Source of the noise (:func:`make_noise_generator`).

        Returns
        -------
        QuadraticObjective
            The noisy objective, ``epsilon``-DP; ``M`` symmetric; constant ``c = 0`` (not
            released).

        """
        if not callable(getattr(generator, "randbelow", None)):
            raise TypeError(
                "generator must be an integer source with randbelow (see "
                f"make_noise_generator), got {type(generator).__name__}"
            )
        d = objective.dim
        coef = objective.released_coefficients()
        noisy = self.snapped(d, coef.size).release(coef, generator)
        return QuadraticObjective.from_released(noisy, d)

    def event(self, round: int = 0) -> PureDpEvent:  # noqa: A002 - matches PureDpEvent.round
        """The ledger event of one release: ``PureDpEvent(epsilon, round)``."""
        return PureDpEvent(epsilon=float(self.epsilon), round=round)


def head_mechanism(epsilon: float, kind: str, bound: str, outputs: int) -> FunctionalMechanism:
    """The mechanism of one row of an ``outputs``-row head: one-vs-rest rows share ``epsilon``.

    Each row's objective is built from the same records, so by basic composition (Dwork and
    Roth 2014, Theorem 3.14) ``outputs`` releases at ``epsilon / outputs`` are
    ``epsilon``-DP together. The client draws with it; the server needs its (public) noise
    scale to aggregate the released objectives.
    """
    return FunctionalMechanism(epsilon=epsilon / outputs, kind=kind, bound=bound)


def fit_private(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    kind: str,
    epsilon: float,
    bounds: FeatureBounds,
    generator: IntegerSource,
    ridge: float | None = None,
    target_bounds: TargetBounds | None = None,
    bound: str = "paper",
) -> tuple[FloatArray, QuadraticObjective]:
    """Normalise, build the objective, perturb it once and minimise it (convenience).

    Parameters
    ----------
    x : array_like of shape (n, len(bounds.names))
        Raw features; normalised with ``bounds`` (public, per record).
    y : array_like of shape (n,)
        ``{0, 1}`` for ``"logistic"``; for ``"linear"`` in ``[-1, 1]``, or raw values mapped
        with ``target_bounds``.
    kind, epsilon, bound
        As in :class:`FunctionalMechanism`.
    bounds : FeatureBounds
        Public bounds that normalise ``x`` record by record.
    generator : IntegerSource
        Source of the Laplace noise (:func:`make_noise_generator`).
    ridge : float or None, default None
        Ridge of :func:`minimise`. ``None``: ``default_ridge`` of the mechanism, the noise
        scale ``Delta/epsilon`` times ``sqrt(d)`` (public, so post-processing).
    target_bounds : TargetBounds or None
        Maps a raw regression target to ``[-1, 1]``; predictions then come out on the
        normalised scale (use ``target_bounds.denormalise``).

    Returns
    -------
    (numpy.ndarray, QuadraticObjective)
        Weights on normalised features (``bounds.dim`` of them) and the released noisy
        objective (``epsilon``-DP). Record ``FunctionalMechanism(epsilon, kind).event()``.
        Predict with ``bounds.normalise(x) @ w`` (linear) or ``... > 0`` (logistic).

    """
    mech = FunctionalMechanism(epsilon=epsilon, kind=kind, bound=bound)
    z = bounds.normalise(x)
    targets = np.asarray(y, dtype=np.float64)
    if target_bounds is not None:
        targets = target_bounds.normalise(targets)
    noisy = mech.perturb(mech.objective(z, targets), generator)
    if ridge is None:
        ridge = default_ridge(mech, z.shape[1])
    return minimise(noisy, ridge=ridge, trim=True), noisy


def default_ridge(mechanism: FunctionalMechanism, d: int) -> float:
    """A data-independent ridge for FM Section 6's regularisation: ``(Delta/epsilon) sqrt(d)``.

    Roughly the spectral norm of the symmetric Laplace noise added to ``M``, so that
    ``M + ridge I`` is positive definite with high probability when the exact ``M`` is
    positive semi-definite. Depends only on public quantities.
    """
    return mechanism.noise_scale(d) * math.sqrt(d)
