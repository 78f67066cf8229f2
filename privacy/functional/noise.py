"""Noise kinds of the functional mechanism (``privacy.functional_noise``), in a registry.

A release of the functional mechanism is one noisy copy of a vector of coefficients
(Zhang et al., PVLDB 2012, Algorithm 1). Two ways to perturb it:

``laplace`` (default, FM's)
    Snapped Laplace noise of scale ``Delta_1 / epsilon`` on every coefficient
    (:class:`privacy.laplace.SnappedLaplace`: exact discrete Laplace on a power-of-two grid,
    immune to Mironov's 2012 floating-point attack): pure ``epsilon``-DP, one
    :class:`privacy.ledger.PureDpEvent`, no delta spent. Needs the L1 sensitivity.

``gaussian``
    ``N(0, sigma^2)`` on every coefficient, ``sigma`` the smallest of the analytic Gaussian
    mechanism (Balle and Wang, ICML 2018, "Improving the Gaussian Mechanism for Differential
    Privacy", Theorem 8; :func:`privacy.inference.calibration.analytic_gaussian_sigma`) for
    ``(epsilon, delta)`` at the L2 sensitivity ``Delta_2`` (replace-one: the largest L2
    distance between the releases of two neighbouring datasets), times ``1 + 1e-6`` so that
    the ledger's pessimistic PLD reads at most ``epsilon``. It spends ``delta =
    privacy.delta``. The ledger records it as ONE :class:`privacy.ledger.SampledGaussianEvent`
    with ``sample_rate = 1``, ``steps = 1`` and ``noise_multiplier = 2 sigma / Delta_2``: the
    PLD accountant's replace-one Gaussian is a shift of 2 (two clipped gradients of norm 1)
    at std ``noise_multiplier``, and a shift of ``Delta_2`` at std ``sigma`` has the same
    privacy loss. So the release composes with everything else in the same accountant.

    Floating point, honestly: the draws are floating-point normals (float64), as Opacus'
    DP-SGD noise is. They come from a :class:`torch.Generator` (Mersenne Twister, not a
    CSPRNG) seeded with 63 bits taken from the caller's integer source (the OS CSPRNG,
    :class:`privacy.laplace.SecureSource`, unless ``privacy.reproducible_noise``: then the
    run seed, **no guarantee**), each normal the sum of four standard normals times
    ``sigma / 2`` (Opacus' ``secure_mode`` hardening, Holohan and Braghin 2021, Sec. 5.1),
    which closes the known floating-point attack on the Gaussian (Jin et al. 2022) but is not
    an exact sampler: the guarantee holds for the ideal real-valued Gaussian. The exact
    alternative, a discrete Gaussian on a grid (Canonne, Kamath, Steinke 2020), is not built.

The head kinds (:mod:`privacy.functional.heads`) say which noise kinds they can release
with (a kind needs the matching sensitivity); the server reads :meth:`FunctionalNoise.scale`
to ridge the summed releases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from privacy.inference.calibration import analytic_gaussian_sigma
from privacy.laplace import IntegerSource
from privacy.ledger import Event, PureDpEvent, SampledGaussianEvent
from privacy.rng import hardened_normal

__all__ = [
    "FUNCTIONAL_NOISES",
    "FunctionalNoise",
    "GaussianNoise",
    "LaplaceNoise",
    "functional_noise",
    "register_functional_noise",
]

FloatArray = npt.NDArray[np.float64]

CALIBRATION_MARGIN = 1e-6
"""Relative margin on the analytic sigma: the PLD accountant's pessimistic discretisation then
reads at most ``epsilon`` for the single event (it reads ``epsilon (1 + ~1e-11)`` without)."""


class FunctionalNoise:
    """Interface of a registered noise kind (see the module docstring)."""

    name: str = ""
    spends_delta: bool = False
    """Its guarantee is ``(epsilon, delta)``: ``privacy.delta`` must be below ``1/n``."""
    sensitivity: str = ""
    """The norm of the sensitivity it needs: ``l1`` or ``l2``."""

    def scale(self, epsilon: float, delta: float, sensitivity: float) -> float:
        """The public per-coefficient noise scale in Laplace units: ``std / sqrt(2)``.

        The Laplace scale ``b`` itself for ``laplace``; ``sigma / sqrt(2)`` for ``gaussian``,
        so that every solver's ridge (written for ``Laplace(b)``, std ``b sqrt 2``) sees the
        same noise standard deviation whatever the kind.
        """
        raise NotImplementedError

    def event(
        self,
        epsilon: float,
        delta: float,
        sensitivity: float,
        round: int = 0,  # noqa: A002 - matches the ledger events' field
    ) -> Event:
        """The ledger event of one release."""
        raise NotImplementedError


@dataclass(frozen=True)
class LaplaceNoise(FunctionalNoise):
    """FM's snapped Laplace (the head kinds draw it themselves: the grid depends on the shape)."""

    name: str = "laplace"
    spends_delta: bool = False
    sensitivity: str = "l1"

    def scale(self, epsilon: float, delta: float, sensitivity: float) -> float:
        """``Delta_1 / epsilon`` (before snapping; the head kinds report the snapped one)."""
        return sensitivity / epsilon

    def event(
        self,
        epsilon: float,
        delta: float,
        sensitivity: float,
        round: int = 0,  # noqa: A002
    ) -> Event:
        """``PureDpEvent(epsilon, round, "functional")``."""
        return PureDpEvent(epsilon=float(epsilon), round=round, mechanism="functional")


@dataclass(frozen=True)
class GaussianNoise(FunctionalNoise):
    """The analytic Gaussian mechanism at L2 sensitivity ``Delta_2`` (module docstring)."""

    name: str = "gaussian"
    spends_delta: bool = True
    sensitivity: str = "l2"

    def sigma(self, epsilon: float, delta: float, sensitivity: float) -> float:
        """Standard deviation of every coefficient's noise: Balle-Wang's, plus the margin."""
        if not 0 < delta < 1:
            raise ValueError(
                f"privacy.delta must be in (0, 1) for privacy.functional_noise='gaussian', "
                f"got {delta!r}"
            )
        base = analytic_gaussian_sigma(float(epsilon), float(delta), float(sensitivity))
        return base * (1.0 + CALIBRATION_MARGIN)

    def scale(self, epsilon: float, delta: float, sensitivity: float) -> float:
        """``sigma / sqrt(2)`` (see :meth:`FunctionalNoise.scale`)."""
        return self.sigma(epsilon, delta, sensitivity) / math.sqrt(2.0)

    def event(
        self,
        epsilon: float,
        delta: float,
        sensitivity: float,
        round: int = 0,  # noqa: A002
    ) -> Event:
        """One sampled-Gaussian step at rate 1, ``noise_multiplier = 2 sigma / Delta_2``."""
        sigma = self.sigma(epsilon, delta, sensitivity)
        return SampledGaussianEvent(
            noise_multiplier=2.0 * sigma / sensitivity, sample_rate=1.0, steps=1, round=round
        )

    def draw(
        self,
        values: npt.ArrayLike,
        epsilon: float,
        delta: float,
        sensitivity: float,
        source: IntegerSource,
    ) -> FloatArray:
        """``values + N(0, sigma^2 I)``, one fresh draw per call (see the module docstring)."""
        if not callable(getattr(source, "randbelow", None)):
            raise TypeError(
                "source must be an integer source with randbelow (see make_noise_generator), "
                f"got {type(source).__name__}"
            )
        v = np.asarray(values, dtype=np.float64)
        sigma = self.sigma(epsilon, delta, sensitivity)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(source.randbelow(1 << 63)))
        return v + hardened_normal(v.shape, sigma, gen)


FUNCTIONAL_NOISES: dict[str, FunctionalNoise] = {}


def register_functional_noise(noise: FunctionalNoise) -> FunctionalNoise:
    """Add ``noise`` to :data:`FUNCTIONAL_NOISES` under ``noise.name``."""
    FUNCTIONAL_NOISES[noise.name] = noise
    return noise


def functional_noise(name: str) -> FunctionalNoise:
    """The registered noise kind ``name``; ``ValueError`` names the setting."""
    if name not in FUNCTIONAL_NOISES:
        raise ValueError(
            f"privacy.functional_noise must be one of {sorted(FUNCTIONAL_NOISES)}, got {name!r}"
        )
    return FUNCTIONAL_NOISES[name]


LAPLACE = LaplaceNoise()
GAUSSIAN = GaussianNoise()
register_functional_noise(LAPLACE)
register_functional_noise(GAUSSIAN)
