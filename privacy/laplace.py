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
import random
import secrets
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Rational, Real
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

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


@runtime_checkable
class IntegerSource(Protocol):
    """A source of uniform random integers, the only randomness the samplers consume."""

    def randbelow(self, n: int) -> int:
        """Return an integer drawn uniformly from ``[0, n)``, ``n >= 1``."""
        ...


class SecureSource:
    """Uniform integers from the operating system's CSPRNG (:func:`secrets.randbelow`).

    The default source: not reproducible, and the privacy guarantees of this module hold
    against any computationally bounded adversary.
    """

    secret: ClassVar[bool] = True

    def randbelow(self, n: int) -> int:
        """Return an integer drawn uniformly from ``[0, n)``.

        Parameters
        ----------
        n : int
            Exclusive upper bound, ``n >= 1``.

        Returns
        -------
        int
            A uniform integer in ``[0, n)``.

        Raises
        ------
        ValueError
            If ``n`` is not a positive int.

        """
        _check_bound(n)
        return secrets.randbelow(n)

    def __repr__(self) -> str:
        return "SecureSource()"


class SeededSource:
    """Reproducible uniform integers from ``random.Random(seed)``: NO privacy guarantee.

    Anyone who knows (or guesses) the seed can regenerate the noise exactly and subtract it,
    so outputs produced with this source carry no differential-privacy guarantee against
    them. Use it for tests and reproducible experiments only.

    Parameters
    ----------
    seed : int
        A non-negative int.

    Raises
    ------
    ValueError
        If ``seed`` is negative, a bool, or not an int.

    """

    secret: ClassVar[bool] = False

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._seed = seed
        self._rng = random.Random(seed)

    def randbelow(self, n: int) -> int:
        """Return an integer drawn uniformly from ``[0, n)`` (Mersenne Twister).

        Parameters
        ----------
        n : int
            Exclusive upper bound, ``n >= 1``.

        Returns
        -------
        int
            A uniform integer in ``[0, n)``.

        Raises
        ------
        ValueError
            If ``n`` is not a positive int.

        """
        _check_bound(n)
        return self._rng.randrange(n)

    def __repr__(self) -> str:
        return f"SeededSource(seed={self._seed})"


def make_source(seed: int | None, *, reproducible: bool) -> IntegerSource:
    """Create the randomness source for the samplers.

    Parameters
    ----------
    seed : int or None
        Seed of the reproducible source. Required when ``reproducible`` is ``True``; ignored
        otherwise.
    reproducible : bool
        ``False`` (the safe choice): a :class:`SecureSource`. ``True``: a
        :class:`SeededSource`, which gives no guarantee against anyone who knows the seed.

    Returns
    -------
    IntegerSource
        The source.

    Raises
    ------
    ValueError
        If ``reproducible`` is ``True`` and ``seed`` is ``None`` or not a non-negative int.

    """
    if not reproducible:
        return SecureSource()
    if seed is None:
        raise ValueError("seed must be set for a reproducible source, got None")
    return SeededSource(seed)


def _check_bound(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"randbelow bound n must be a positive int, got {n!r}")


def _exact(value: object, name: str) -> Fraction:
    """Convert an int, Fraction or finite float to a Fraction exactly."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, Integral):
        return Fraction(int(value))
    if isinstance(value, Rational):
        return Fraction(int(value.numerator), int(value.denominator))
    if isinstance(value, Real):
        as_float = float(value)
        if math.isfinite(as_float):
            return Fraction(as_float)
    raise ValueError(f"{name} must be a finite int, Fraction or float, got {value!r}")


# --- exact samplers on integers (the public functions validate, then call these) ---


def _bernoulli_ratio(num: int, den: int, source: IntegerSource) -> bool:
    """Exact Bernoulli(num / den) for integers ``num >= 0``, ``den >= 1``."""
    if num <= 0:
        return False
    if num >= den:
        return True
    return source.randbelow(den) < num


def _bernoulli_exp_unit(num: int, den: int, source: IntegerSource) -> bool:
    """Exact Bernoulli(exp(-num / den)) for ``0 <= num <= den`` (CKS Alg. 1, gamma <= 1).

    ``K`` counts how many successive Bernoulli(gamma / K) succeed; ``P(K odd) = exp(-gamma)``.
    """
    k = 1
    while _bernoulli_ratio(num, den * k, source):
        k += 1
    return k % 2 == 1


def _bernoulli_exp_ratio(num: int, den: int, source: IntegerSource) -> bool:
    """Exact Bernoulli(exp(-num / den)) for ``num >= 0``, ``den >= 1`` (CKS Alg. 1)."""
    whole, rest = divmod(num, den)
    for _ in range(whole):
        if not _bernoulli_exp_unit(1, 1, source):
            return False
    return _bernoulli_exp_unit(rest, den, source)


def _discrete_laplace_ts(t: int, s: int, source: IntegerSource) -> int:
    """Exact discrete Laplace of scale ``t / s`` (CKS Alg. 2), ``t, s >= 1`` integers."""
    while True:
        u = source.randbelow(t)
        if not _bernoulli_exp_unit(u, t, source):  # accept U with probability exp(-U / t)
            continue
        v = 0  # V ~ Geometric(1 - exp(-1)) on {0, 1, ...}
        while _bernoulli_exp_unit(1, 1, source):
            v += 1
        y = (u + t * v) // s  # X = U + tV ~ Geometric(1 - exp(-1/t)); Y = floor(X / s)
        negative = source.randbelow(2) == 1
        if negative and y == 0:  # avoid counting 0 twice
            continue
        return -y if negative else y


def _scale_parts(scale: Fraction, name: str = "scale") -> tuple[int, int]:
    exact = _exact(scale, name)
    if exact <= 0:
        raise ValueError(f"{name} must be > 0, got {scale!r}")
    return exact.numerator, exact.denominator


# --- public samplers ---


def bernoulli(p: Fraction, source: IntegerSource) -> bool:
    """Draw an exact Bernoulli(``p``) sample.

    Parameters
    ----------
    p : Fraction
        Success probability in ``[0, 1]``; an int or a float (converted exactly with
        ``Fraction(p)``) is also accepted.
    source : IntegerSource
        Uniform integers; one ``randbelow(p.denominator)`` call unless ``p`` is 0 or 1.

    Returns
    -------
    bool
        ``True`` with probability exactly ``p``.

    Raises
    ------
    ValueError
        If ``p`` is not a number in ``[0, 1]``.

    """
    exact = _exact(p, "p")
    if not 0 <= exact <= 1:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return _bernoulli_ratio(exact.numerator, exact.denominator, source)


def bernoulli_exp(gamma: Fraction, source: IntegerSource) -> bool:
    """Draw an exact Bernoulli(``exp(-gamma)``) sample (Canonne, Kamath, Steinke 2020, Alg. 1).

    For ``gamma <= 1`` it runs the loop ``K = 1; while Bernoulli(gamma / K): K += 1`` and
    returns whether ``K`` is odd (probability ``exp(-gamma)``). For ``gamma > 1`` it returns
    the product of ``floor(gamma)`` Bernoulli(``exp(-1)``) samples and one
    Bernoulli(``exp(-(gamma - floor(gamma)))``), stopping at the first failure.

    Parameters
    ----------
    gamma : Fraction
        Non-negative exponent; an int or a float (converted exactly) is also accepted.
    source : IntegerSource
        Uniform integers.

    Returns
    -------
    bool
        ``True`` with probability exactly ``exp(-gamma)``.

    Raises
    ------
    ValueError
        If ``gamma`` is negative or not a finite number.

    """
    exact = _exact(gamma, "gamma")
    if exact < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    return _bernoulli_exp_ratio(exact.numerator, exact.denominator, source)


def discrete_laplace(scale: Fraction, source: IntegerSource) -> int:
    """Draw an exact discrete Laplace sample (Canonne, Kamath, Steinke 2020, Alg. 2).

    The output ``x`` is an integer with ``P(x) = (1 - q) / (1 + q) * q**|x|``,
    ``q = exp(-1 / scale)``, i.e. ``P(x)`` proportional to ``exp(-|x| / scale)``. With
    ``scale = t / s`` in lowest terms, Algorithm 2 draws ``U`` uniform in ``[0, t)``
    (accepted with probability ``exp(-U / t)``) and ``V`` geometric, so ``X = U + t V`` is
    geometric of scale ``t``; ``floor(X / s)`` with a random sign (rejecting ``-0``) is the
    sample. An integer scale (``s = 1``) is the fastest case.

    Parameters
    ----------
    scale : Fraction
        Scale ``> 0``; an int or a float (converted exactly) is also accepted.
    source : IntegerSource
        Uniform integers.

    Returns
    -------
    int
        The sample.

    Raises
    ------
    ValueError
        If ``scale`` is not a finite number ``> 0``.

    """
    t, s = _scale_parts(scale)
    return _discrete_laplace_ts(t, s, source)


def discrete_laplace_array(scale: Fraction, size: int, source: IntegerSource) -> np.ndarray:
    """Draw ``size`` i.i.d. exact discrete Laplace samples (see :func:`discrete_laplace`).

    Parameters
    ----------
    scale : Fraction
        Scale ``> 0``; an int or a float (converted exactly) is also accepted.
    size : int
        Number of samples, ``>= 0``.
    source : IntegerSource
        Uniform integers.

    Returns
    -------
    numpy.ndarray
        A 1-D ``int64`` array of length ``size``.

    Raises
    ------
    ValueError
        If ``scale`` is not a finite number ``> 0`` or ``size`` is not a non-negative int.
    OverflowError
        If a sample does not fit in ``int64`` (only conceivable for scales near ``1e17``).

    """
    t, s = _scale_parts(scale)
    if isinstance(size, bool) or not isinstance(size, Integral) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    return np.array([_discrete_laplace_ts(t, s, source) for _ in range(int(size))], np.int64)


# --- the mechanism ---


def _positive_finite(value: object, name: str) -> Fraction:
    exact = _exact(value, name)
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
            if isinstance(g, bool) or not _is_float_power_of_two(_exact(g, "granularity")):
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
        target = _exact(self.sensitivity, "sensitivity") / (100 * self._changed)
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
            return float(_exact(self.granularity, "granularity"))
        return math.ldexp(1.0, self._auto_exponent())

    @property
    def integer_sensitivity(self) -> int:
        """L1 sensitivity of ``round(v / gamma)``: ``ceil(sensitivity / gamma) + changed``."""
        ratio = _exact(self.sensitivity, "sensitivity") / Fraction(self.gamma)
        return math.ceil(ratio) + self._changed

    @property
    def noise_scale(self) -> float:
        """Effective real noise scale ``gamma * integer_sensitivity / epsilon``.

        Close to ``sensitivity / epsilon``; the excess is the cost of snapping (about 1% plus
        one grid step with the automatic ``gamma``).
        """
        epsilon = _exact(self.epsilon, "epsilon")
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
        t = Fraction(self.integer_sensitivity) / _exact(self.epsilon, "epsilon")
        noise = [_discrete_laplace_ts(t.numerator, t.denominator, source) for _ in centre]
        out = np.array(
            [_grid_value(c + z, gamma, gamma_exact) for c, z in zip(centre, noise, strict=True)],
            np.float64,
        )
        return out.reshape(arr.shape)
