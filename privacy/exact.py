"""Exact Bernoulli and discrete Laplace samplers (Canonne, Kamath and Steinke, NeurIPS 2020).

Algorithms 1 and 2 of "The Discrete Gaussian for Differential Privacy": only integer and
:class:`fractions.Fraction` arithmetic and uniform integers from an explicit
:class:`privacy.sources.IntegerSource`, so that, given a uniform source, every output
distribution is exactly the stated one (no floating-point rounding anywhere). The guarantee
these samplers give a release is stated in :mod:`privacy.laplace`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Rational, Real

import numpy as np

from privacy.sources import IntegerSource


def exact_fraction(value: object, name: str) -> Fraction:
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


def discrete_laplace_ts(t: int, s: int, source: IntegerSource) -> int:
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
    exact = exact_fraction(scale, name)
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
    exact = exact_fraction(p, "p")
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
    exact = exact_fraction(gamma, "gamma")
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
    return discrete_laplace_ts(t, s, source)


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
    return np.array([discrete_laplace_ts(t, s, source) for _ in range(int(size))], np.int64)


# --- the mechanism ---
