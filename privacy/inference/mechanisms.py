"""Inference-privacy mechanisms: private predictions for a querier's input.

Tian and Tandon ("Inference Privacy: Properties and Mechanisms", arXiv 2411.18746) define
**inference privacy** (IP): a randomised prediction ``M`` is ``(epsilon, delta)``-IP at radius
``alpha`` (metric: L2 in the model's query space) if for every pair of inputs with
``||x - x'||_2 <= alpha`` and every set ``S`` of outputs

    P[M(x) in S] <= e^epsilon P[M(x') in S] + delta.

It is local DP restricted to neighbours within ``alpha``: the querier's input is protected up to
that radius, from whoever sees the prediction (the server that serves the model, or anyone
the prediction is passed to). The model's training data is *not* what this protects.

Two families, each a small object here (:data:`INFERENCE_MECHANISMS`):

* **input perturbation** (``input_gaussian``): release ``x + N(0, sigma^2 I)``; the identity
  has L2 sensitivity ``alpha`` over the ball, and the prediction computed from the noisy
  input is post-processing, so no property of the model is needed.
* **output perturbation** (``output_gaussian``, ``output_laplace``): release
  ``f(x) + noise`` for the model's scores ``f`` (logits); if ``f`` is ``L``-Lipschitz
  (L2 -> L2, :mod:`privacy.inference.lipschitz`) then ``||f(x) - f(x')||_2 <= L alpha``, and
  ``||.||_1 <= sqrt(K) ||.||_2`` for ``K`` outputs bounds the L1 sensitivity.

Every release draws fresh noise from a secret source (a torch generator seeded from OS
entropy, :func:`privacy.make_generator` with ``secure=True``, or the OS CSPRNG for the
Laplace); a release is one query. Repeated queries of the same input compose: see
:mod:`privacy.inference.composition`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from privacy.inference.calibration import (
    check_delta,
    check_epsilon,
    check_positive,
    gaussian_sigma,
    laplace_scale,
)
from privacy.laplace import IntegerSource, SecureSource, SnappedLaplace
from privacy.rng import hardened_normal, make_generator


@dataclass(frozen=True)
class InferenceSpec:
    """What a mechanism is built from (explicit parameters; no settings object).

    Attributes
    ----------
    epsilon, delta : float
        The per-query guarantee asked for. ``delta`` may be 0 only for ``output_laplace``.
    radius : float
        ``alpha``: the L2 radius in the model's query space within which inputs are hidden.
    lipschitz : float
        A certified L2 -> L2 Lipschitz bound of the model's scores (output mechanisms only).
    outputs : int
        Number of scores ``K`` (output mechanisms only).
    """

    epsilon: float
    delta: float
    radius: float
    lipschitz: float = math.nan
    outputs: int = 0


def _secure_normal(shape: tuple[int, ...], sigma: float, gen: torch.Generator | None) -> np.ndarray:
    """``N(0, sigma^2)`` noise from a fresh secure generator (or the caller's ``gen``).

    :func:`privacy.rng.hardened_normal` (Opacus' four-normal floating-point hardening).
    """
    gen = gen if gen is not None else make_generator(None, secure=True)
    return hardened_normal(shape, sigma, gen)


@dataclass(frozen=True)
class InferenceMechanism:
    """Base: a mechanism acts on the query (``stage == "input"``) or on the scores."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "none"
    pure: ClassVar[bool] = False  # pure epsilon-IP: delta may be 0
    spec: InferenceSpec
    noise_scale: float = field(init=False, default=0.0)

    @property
    def epsilon(self) -> float:
        """Per-query epsilon."""
        return self.spec.epsilon

    @property
    def delta(self) -> float:
        """Per-query delta (0 for a pure mechanism)."""
        return self.spec.delta

    @property
    def sensitivity(self) -> float:
        """Sensitivity of the released value over the alpha-ball (its norm: see subclass)."""
        return 0.0

    def release(self, values: np.ndarray, gen: torch.Generator | None = None) -> np.ndarray:
        """Noised copy of ``values`` (rows are queries; each row gets its own noise)."""
        return np.asarray(values, dtype=np.float64).copy()

    def describe(self) -> dict[str, float | str]:
        """The calibration, as a flat dict (written beside predictions)."""
        return {
            "mechanism": self.name,
            "stage": self.stage,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "radius": self.spec.radius,
            "sensitivity": self.sensitivity,
            "noise_scale": self.noise_scale,
        }


@dataclass(frozen=True)
class NoInferencePrivacy(InferenceMechanism):
    """``none``: the model's exact scores. No guarantee (epsilon is infinite)."""

    name: ClassVar[str] = "none"
    stage: ClassVar[str] = "none"

    @property
    def epsilon(self) -> float:
        """Infinite: the exact prediction can be inverted."""
        return math.inf


@dataclass(frozen=True)
class InputGaussian(InferenceMechanism):
    """``input_gaussian``: release the query as ``x + N(0, sigma^2 I)``, then predict.

    Guarantee: ``(epsilon, delta)``-IP at radius ``alpha``. Neighbouring relation: two queries
    with ``||x - x'||_2 <= alpha`` in the query space. The identity has L2 sensitivity
    ``alpha`` there, so the Gaussian mechanism (Balle and Wang 2018, Theorem 8: exact
    condition) makes the noisy query ``(epsilon, delta)``-indistinguishable; the model's
    prediction on it, and any clipping to the public input box, are post-processing.
    Calibration: ``sigma`` is the smallest value meeting the analytic condition
    (:func:`~privacy.inference.calibration.analytic_gaussian_sigma`), and never above the
    classical ``sqrt(2 ln(1.25/delta)) alpha / epsilon`` where that holds (``epsilon < 1``).
    Needs nothing of the model.
    """

    name: ClassVar[str] = "input_gaussian"
    stage: ClassVar[str] = "input"

    def __post_init__(self) -> None:
        sigma = gaussian_sigma(self.spec.epsilon, self.spec.delta, self.sensitivity)
        object.__setattr__(self, "noise_scale", sigma)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the identity over the ball: ``alpha``."""
        return self.spec.radius

    def release(self, values: np.ndarray, gen: torch.Generator | None = None) -> np.ndarray:
        """``values + N(0, sigma^2 I)`` with fresh secure noise."""
        arr = np.asarray(values, dtype=np.float64)
        return arr + _secure_normal(arr.shape, self.noise_scale, gen)


def _lipschitz(spec: InferenceSpec, name: str) -> float:
    if not (math.isfinite(spec.lipschitz) and spec.lipschitz > 0):
        raise ValueError(
            f"mechanism {name!r} needs a certified Lipschitz bound > 0 of the model, got "
            f"{spec.lipschitz!r}"
        )
    if spec.outputs < 1:
        raise ValueError(f"mechanism {name!r} needs the number of outputs >= 1, got {spec.outputs}")
    return spec.lipschitz


@dataclass(frozen=True)
class OutputGaussian(InferenceMechanism):
    """``output_gaussian``: release the scores as ``f(x) + N(0, sigma^2 I_K)``.

    Guarantee: ``(epsilon, delta)``-IP at radius ``alpha``. If ``f`` is ``L``-Lipschitz from
    the query space (L2) to the scores (L2), queries within ``alpha`` have scores within
    ``D2 = L alpha``: the Gaussian mechanism with sensitivity ``D2`` (Balle and Wang 2018,
    Theorem 8; calibrated as ``input_gaussian``). The class (argmax) is post-processing.
    ``L`` must be a certified upper bound (:func:`privacy.inference.lipschitz.lipschitz_bound`).
    """

    name: ClassVar[str] = "output_gaussian"
    stage: ClassVar[str] = "output"

    def __post_init__(self) -> None:
        _lipschitz(self.spec, self.name)
        sigma = gaussian_sigma(self.spec.epsilon, self.spec.delta, self.sensitivity)
        object.__setattr__(self, "noise_scale", sigma)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the scores: ``L alpha``."""
        return self.spec.lipschitz * self.spec.radius

    def release(self, values: np.ndarray, gen: torch.Generator | None = None) -> np.ndarray:
        """``scores + N(0, sigma^2 I)`` with fresh secure noise."""
        arr = np.asarray(values, dtype=np.float64)
        return arr + _secure_normal(arr.shape, self.noise_scale, gen)


@dataclass(frozen=True)
class OutputLaplace(InferenceMechanism):
    """``output_laplace``: release the scores with Laplace noise (pure ``epsilon``-IP).

    Guarantee: ``(epsilon, 0)``-IP at radius ``alpha``. With ``f`` ``L``-Lipschitz (L2 -> L2)
    and ``K`` scores, ``||f(x) - f(x')||_1 <= sqrt(K) ||f(x) - f(x')||_2 <= sqrt(K) L alpha =
    D1`` (Cauchy-Schwarz), and Laplace noise of scale ``D1 / epsilon`` per score is
    ``epsilon``-DP for an L1-sensitivity-``D1`` value (Dwork, McSherry, Nissim and Smith 2006).
    Drawn as :class:`privacy.laplace.SnappedLaplace` (exact discrete Laplace on a power-of-two
    grid from the OS CSPRNG; immune to Mironov's floating-point attack), whose scale is
    about 1% above ``D1 / epsilon``. ``delta`` must be 0 or is ignored: the guarantee is pure.
    """

    name: ClassVar[str] = "output_laplace"
    stage: ClassVar[str] = "output"
    pure: ClassVar[bool] = True
    snapped: SnappedLaplace = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _lipschitz(self.spec, self.name)
        laplace_scale(self.spec.epsilon, self.sensitivity)  # checks epsilon and sensitivity
        snap = SnappedLaplace(self.spec.epsilon, self.sensitivity, self.spec.outputs)
        object.__setattr__(self, "snapped", snap)
        object.__setattr__(self, "noise_scale", snap.noise_scale)

    @property
    def delta(self) -> float:
        """Pure DP: 0."""
        return 0.0

    @property
    def sensitivity(self) -> float:
        """L1 sensitivity of the scores: ``sqrt(K) L alpha``."""
        return math.sqrt(self.spec.outputs) * self.spec.lipschitz * self.spec.radius

    def release(
        self,
        values: np.ndarray,
        gen: torch.Generator | None = None,
        source: IntegerSource | None = None,
    ) -> np.ndarray:
        """Each row released by the snapped Laplace with the OS CSPRNG (``gen`` unused)."""
        arr = np.atleast_2d(np.asarray(values, dtype=np.float64))
        src = source if source is not None else SecureSource()
        out = np.stack([self.snapped.release(row, src) for row in arr])
        return out.reshape(np.shape(values))


INFERENCE_MECHANISMS: dict[str, type[InferenceMechanism]] = {}


def register_inference_mechanism(cls: type[InferenceMechanism]) -> type[InferenceMechanism]:
    """Register a mechanism class under its ``name``."""
    INFERENCE_MECHANISMS[cls.name] = cls
    return cls


for _cls in (NoInferencePrivacy, InputGaussian, OutputGaussian, OutputLaplace):
    register_inference_mechanism(_cls)


def make_mechanism(
    name: str,
    *,
    epsilon: float = math.inf,
    delta: float = 0.0,
    radius: float = 1.0,
    lipschitz: float = math.nan,
    outputs: int = 0,
) -> InferenceMechanism:
    """Build mechanism ``name`` with its parameters checked (errors name the setting).

    ``none`` ignores every parameter. The others need ``epsilon`` finite and > 0, ``radius``
    > 0 and ``delta`` in ``(0, 1)``; pure mechanisms (``output_laplace``) also accept
    ``delta = 0`` and report delta 0 whatever is given.
    """
    if name not in INFERENCE_MECHANISMS:
        raise ValueError(f"mechanism must be one of {sorted(INFERENCE_MECHANISMS)}, got {name!r}")
    cls = INFERENCE_MECHANISMS[name]
    if cls.stage == "none":
        return cls(InferenceSpec(math.inf, 0.0, math.inf))
    epsilon = check_epsilon(epsilon)
    radius = check_positive(radius, "radius")
    pure = sorted(n for n, c in INFERENCE_MECHANISMS.items() if c.pure)
    delta = check_delta(delta, allow_zero=cls.pure, pure=pure)
    return cls(InferenceSpec(epsilon, delta, radius, float(lipschitz), int(outputs)))
