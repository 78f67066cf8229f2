"""Public bounds of datasets: what the functional mechanism's models normalise records by.

A dataset declares its bounds here (:func:`register_public_bounds`) where it is defined
(:mod:`tasks.data.images`, :mod:`tasks.data.tabular`). Bounds are public: taken from data
dictionaries and the loaders' own scaling, never from the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privacy.functional import FeatureBounds, TargetBounds


@dataclass(frozen=True)
class PublicBounds:
    """A dataset's declared public bounds: features (and, for regression, the target).

    The models that the functional mechanism serves (:mod:`tasks.models`: ``logistic``,
    ``linear``, ``fm_network``) normalise their raw input with ``features`` inside their
    forward pass, so every privacy mode and the server's evaluation see the same
    unit-ball records while the :class:`~tasks.data.DataBundle` keeps raw features.
    """

    features: FeatureBounds
    target: TargetBounds | None = None


PUBLIC_BOUNDS: dict[str, PublicBounds] = {}


def register_public_bounds(name: str, bounds: PublicBounds) -> PublicBounds:
    """Declare the public bounds of dataset ``name`` (``dataset.name``)."""
    PUBLIC_BOUNDS[name] = bounds
    return bounds


def public_bounds(name: str) -> PublicBounds:
    """The declared bounds of dataset ``name``; ``ValueError`` lists the datasets that have them."""
    if name not in PUBLIC_BOUNDS:
        raise ValueError(
            f"dataset.name={name!r} declares no public feature bounds, which the functional "
            f"mechanism's models need; datasets with bounds: {sorted(PUBLIC_BOUNDS)}"
        )
    return PUBLIC_BOUNDS[name]


def pixel_bounds(pixels: int) -> FeatureBounds:
    """Images scaled to ``[0, 1]`` by their loaders: the range is public by construction."""
    return FeatureBounds(
        lower=np.zeros(pixels),
        upper=np.ones(pixels),
        names=tuple(f"pixel_{i}" for i in range(pixels)),
        intercept=True,
    )
