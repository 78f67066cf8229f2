"""Floating-point-safe Laplace mechanism built on an exact discrete Laplace sampler.

The textbook Laplace mechanism ``v + Lap(sensitivity / epsilon)`` computed with floating-point
noise is **not** differentially private as implemented: Mironov (2012, "On significance of the
least significant bits for differential privacy", CCS) showed that the set of floats a
floating-point Laplace sampler can produce around ``v`` depends on ``v``, so some outputs are
possible under one input and impossible under a neighbouring one (infinite privacy loss), and
an attacker can often recover ``v`` from the low-order bits of the output.

This module avoids floating-point sampling altogether:

* :func:`bernoulli`, :func:`bernoulli_exp` and :func:`discrete_laplace` are *exact* samplers
  (Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS
  2020, Algorithms 1 and 2). They use only integer and :class:`fractions.Fraction` arithmetic
  and uniform integers from an explicit :class:`IntegerSource`; given a truly uniform source,
  their output distributions are exactly the stated ones (no rounding anywhere).
* :class:`SnappedLaplace` releases a real vector ``v`` as ``gamma * (round(v / gamma) + Z)``
  with ``gamma`` a power of two and ``Z`` an exact discrete Laplace vector.

Guarantee
---------
If ``v`` has L1 sensitivity ``sensitivity`` under some neighbouring relation (chosen and
justified by the caller, e.g. add/remove one client's clipped update), one
:meth:`SnappedLaplace.release` is ``epsilon``-DP (pure DP, ``delta = 0``) with respect to that
same relation, provided the randomness source is uniform (see below). It rests on the
geometric / discrete Laplace mechanism (Ghosh, Roughgarden and Sundararajan 2009, "Universally
utility-maximizing privacy mechanisms", STOC; Canonne, Kamath and Steinke 2020, Sec. on the
discrete Laplace and Algorithm 2): for an integer-valued query ``q`` with L1 sensitivity
``Delta_int``, releasing ``q(x) + Z`` with ``Z`` i.i.d. discrete Laplace of scale
``Delta_int / epsilon`` (``P(z) proportional to exp(-|z| epsilon / Delta_int)``) is
``epsilon``-DP, because ``P(q(x) + Z = y) / P(q(x') + Z = y) <= exp(epsilon ||q(x) - q(x')||_1
/ Delta_int) <= exp(epsilon)`` for every integer vector ``y``. Here ``q(v) = round(v / gamma)``;
rounding moves each coordinate by at most ``1/2`` grid step, so neighbouring inputs give
integer images at L1 distance at most ``sensitivity / gamma + dim``, whence
``Delta_int = ceil(sensitivity / gamma) + dim``. The float output is a deterministic function
of the integer vector ``q(v) + Z`` (post-processing), so it is ``epsilon``-DP too.

Why snapping closes Mironov's attack: every output lies on the fixed grid ``gamma * Z^dim``
whatever the input; the released integers have exactly the (shifted) discrete Laplace
distribution, so every grid point has positive probability under every input and the
probability ratios are the exact ones above; no floating-point noise is ever sampled, and the
only float operations (``v / gamma`` and ``n * gamma`` with ``gamma`` a power of two) are exact
scalings. The rounding of ``v`` itself is deterministic preprocessing whose cost is paid in
``Delta_int``.

Randomness sources
------------------
:class:`SecureSource` (the default everywhere) draws from the operating system's CSPRNG
(:func:`secrets.randbelow`); the guarantee then holds against any computationally bounded
adversary. :class:`SeededSource` (``random.Random(seed)``) exists for reproducible tests and
experiments only: it gives **no** privacy guarantee against anyone who knows (or can guess)
the seed, because they can replay the noise and subtract it. Side channels (notably the
running time of the rejection samplers, which depends on the sampled noise) are out of scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral

import numpy as np

from privacy.exact import (
    bernoulli,
    bernoulli_exp,
    discrete_laplace,
    discrete_laplace_array,
    discrete_laplace_ts,
    exact_fraction,
)
from privacy.sources import IntegerSource, SecureSource, SeededSource, make_source

__all__ = [
    "IntegerSource",
    "SecureSource",
    "SeededSource",
    "SnappedLaplace",
    "bernoulli",
    "bernoulli_exp",
    "discrete_laplace",
    "discrete_laplace_array",
    "make_source",
]

_MIN_EXPONENT = -1074  # 2**-1074 is the smallest positive (subnormal) float64


def _positive_finite(value: object, name: str) -> Fraction:
    exact = exact_fraction(value, name)
    if exact <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return exact


def _is_float_power_of_two(value: Fraction) -> bool:
    """Whether ``value`` is exactly ``2**k`` and representable as a float64."""
    num, den = value.numerator, value.denominator
    if num <= 0 or num & (num - 1) or den & (den - 1):
        return False
    return _exact_to_float(value) == value


def _exact_to_float(value: Fraction | int) -> float:
    """Round exactly to the nearest float64; ``+-inf`` beyond the float64 range."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _grid_value(n: int, gamma: float, gamma_exact: Fraction) -> float:
    """``n * gamma`` as a float64, a deterministic function of the integer ``n``.

    ``float(n)`` rounds to 53 bits and the product with a power of two is an exact scaling,
    so the result is ``n * gamma`` correctly rounded (``+-inf`` beyond the float64 range).
    """
    try:
        return float(n) * gamma
    except OverflowError:  # |n| >= 2**1024, possible only when gamma < 1
        return _exact_to_float(n * gamma_exact)


@dataclass(frozen=True)
class SnappedLaplace:
    """Epsilon-DP release of a real vector as ``gamma * (round(v / gamma) + Z)``.

    ``Z`` is i.i.d. exact discrete Laplace of integer scale ``integer_sensitivity / epsilon``
    and ``gamma`` a power of two. If ``v`` has L1 sensitivity ``sensitivity`` under the
    caller's stated neighbouring relation, :meth:`release` is ``epsilon``-DP (pure DP) with
    respect to that relation: the geometric / discrete Laplace mechanism (Ghosh, Roughgarden,
    Sundararajan 2009; Canonne, Kamath, Steinke 2020) applied to the integer query
    ``round(v / gamma)``, whose L1 sensitivity is at most ``integer_sensitivity =
    ceil(sensitivity / gamma) + dim`` because rounding moves each coordinate by at most half
    a grid step. Because the output lies on the fixed grid ``gamma * Z^dim``, is a
    deterministic function of exactly distributed integers, and involves no floating-point
    noise, Mironov's (2012) floating-point attack does not apply (see the module docstring).
    With a :class:`SeededSource` there is no guarantee against anyone who knows the seed.

    Each :meth:`release` is one ``epsilon``-DP mechanism; repeated releases compose and must
    be accounted for by the caller.

    Parameters
    ----------
    epsilon : float
        Privacy parameter, finite and ``> 0``; converted exactly with ``Fraction(epsilon)``.
    sensitivity : float
        L1 sensitivity of the released vector, finite and ``> 0``.
    dim : int
        Number of released coordinates, ``>= 1``.
    granularity : float or None, default None
        Grid step ``gamma``: a positive power of two, or ``None`` to choose the largest power
        of two ``2**k`` with ``changed * 2**k <= sensitivity / 100`` (computed exactly), which
        keeps the snapping cost (``noise_scale`` versus ``sensitivity / epsilon``) at about
        1% plus one grid step.
    changed : int or None, default None
        The most coordinates in which the values of two neighbouring inputs can differ
        (``None``: ``dim``). A coordinate that is equal on both neighbours rounds to the same
        grid point, so only these add rounding to the integer sensitivity
        (``ceil(sensitivity / gamma) + changed``). The caller's neighbouring relation must
        guarantee it, as it guarantees ``sensitivity``.

    Raises
    ------
    ValueError
        Naming the field and its value, if ``epsilon`` or ``sensitivity`` is not finite and
        ``> 0``, ``dim`` is not a positive int, ``granularity`` is not a positive power of
        two, the automatic grid step is below the smallest float64, or the resulting noise
        scale overflows float64.

    """

    epsilon: float
    sensitivity: float
    dim: int
    granularity: float | None = None
    changed: int | None = None

    def __post_init__(self) -> None:
        _positive_finite(self.epsilon, "epsilon")
        _positive_finite(self.sensitivity, "sensitivity")
        if isinstance(self.dim, bool) or not isinstance(self.dim, Integral) or self.dim <= 0:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        c = self.changed
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, Integral) or not 0 < c <= self.dim
        ):
            raise ValueError(f"changed must be an int in [1, dim={self.dim}], got {c!r}")
        if self.granularity is not None:
            g = self.granularity
            if isinstance(g, bool) or not _is_float_power_of_two(exact_fraction(g, "granularity")):
                raise ValueError(f"granularity must be a positive power of two, got {g!r}")
        elif self._auto_exponent() < _MIN_EXPONENT:
            raise ValueError(
                f"sensitivity={self.sensitivity!r} is too small for dim={self.dim!r}: the grid "
                "step sensitivity / (100 * dim) is below the smallest float64; pass granularity"
            )
        if not math.isfinite(self.noise_scale):
            raise ValueError(
                f"epsilon={self.epsilon!r}, sensitivity={self.sensitivity!r} and "
                f"granularity={self.granularity!r} give a noise scale beyond float64"
            )

    @property
    def _changed(self) -> int:
        return int(self.dim if self.changed is None else self.changed)

    def _auto_exponent(self) -> int:
        """Largest ``k`` with ``changed * 2**k <= sensitivity / 100``, in exact arithmetic."""
        target = exact_fraction(self.sensitivity, "sensitivity") / (100 * self._changed)
        k = target.numerator.bit_length() - target.denominator.bit_length()
        while Fraction(2) ** k > target:
            k -= 1
        while Fraction(2) ** (k + 1) <= target:
            k += 1
        return k

    @property
    def gamma(self) -> float:
        """Grid step, a power of two (``granularity``, or chosen automatically)."""
        if self.granularity is not None:
            return float(exact_fraction(self.granularity, "granularity"))
        return math.ldexp(1.0, self._auto_exponent())

    @property
    def integer_sensitivity(self) -> int:
        """L1 sensitivity of ``round(v / gamma)``: ``ceil(sensitivity / gamma) + changed``."""
        ratio = exact_fraction(self.sensitivity, "sensitivity") / Fraction(self.gamma)
        return math.ceil(ratio) + self._changed

    @property
    def noise_scale(self) -> float:
        """Effective real noise scale ``gamma * integer_sensitivity / epsilon``.

        Close to ``sensitivity / epsilon``; the excess is the cost of snapping (about 1% plus
        one grid step with the automatic ``gamma``).
        """
        epsilon = exact_fraction(self.epsilon, "epsilon")
        exact = Fraction(self.gamma) * self.integer_sensitivity / epsilon
        return _exact_to_float(exact)

    def release(self, values: np.ndarray, source: IntegerSource) -> np.ndarray:
        """Release ``values`` with ``epsilon``-DP: ``gamma * (rint(values / gamma) + Z)``.

        Parameters
        ----------
        values : numpy.ndarray
            Finite real array (float or integer dtype, converted to float64) with
            ``values.size == dim``, any shape. The caller's ``sensitivity`` must bound the L1
            distance between the float64 values of neighbouring inputs.
        source : IntegerSource
            Uniform integers for the noise; use :class:`SecureSource` for a real guarantee.

        Returns
        -------
        numpy.ndarray
            float64 array of the same shape, every entry a multiple of ``gamma`` (entries
            beyond the float64 range, only possible for absurd inputs, become ``+-inf``).

        Raises
        ------
        ValueError
            If ``values`` has the wrong size, a non-real dtype, or non-finite entries. The
            messages never contain the values themselves (they are private data).

        """
        arr = np.asarray(values)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"values must have a float or integer dtype, got {arr.dtype}")
        if arr.size != self.dim:
            raise ValueError(f"values must have size dim={self.dim}, got size {arr.size}")
        flat = arr.astype(np.float64).ravel()
        n_bad = int(np.count_nonzero(~np.isfinite(flat)))
        if n_bad:
            raise ValueError(f"values must be finite ({n_bad} non-finite entries)")
        gamma = self.gamma
        gamma_exact = Fraction(gamma)
        with np.errstate(over="ignore", under="ignore"):
            rounded = np.rint(flat / gamma)  # exact: gamma is a power of two
        centre = [
            int(r) if math.isfinite(r) else round(Fraction(v) / gamma_exact)  # overflowed
            for r, v in zip(rounded.tolist(), flat.tolist(), strict=True)
        ]
        t = Fraction(self.integer_sensitivity) / exact_fraction(self.epsilon, "epsilon")
        noise = [discrete_laplace_ts(t.numerator, t.denominator, source) for _ in centre]
        out = np.array(
            [_grid_value(c + z, gamma, gamma_exact) for c, z in zip(centre, noise, strict=True)],
            np.float64,
        )
        return out.reshape(arr.shape)
