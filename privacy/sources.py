"""The uniform integers every exact sampler consumes: a secure source, or a seeded one.

:class:`SecureSource` draws from the operating system (:mod:`secrets`): the server cannot know
it, so it is what every release uses. :class:`SeededSource` is reproducible from a seed and is
used only when a user asks for reproducible noise (``privacy.reproducible_noise``, labelled "no
guarantee"). :func:`make_source` picks one of them; the samplers of :mod:`privacy.exact` take
the source explicitly.
"""

from __future__ import annotations

import random
import secrets
from typing import ClassVar, Protocol, runtime_checkable


def check_bound(n: int) -> None:
    """``n`` is a valid bound for ``randbelow`` (``ValueError`` otherwise)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"randbelow bound n must be a positive int, got {n!r}")


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
        check_bound(n)
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
        check_bound(n)
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
