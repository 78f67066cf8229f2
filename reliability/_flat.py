"""Flattening of parameter dictionaries into vectors (internal helper of the scorers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reliability.types import Weights

__all__ = ["flatten", "flatten_all", "scale"]


def flatten(weights: Weights, keys: Sequence[str]) -> np.ndarray:
    """Concatenate the arrays of ``weights`` in the order ``keys`` as one float64 vector.

    Raises
    ------
    ValueError
        If ``weights`` does not have exactly the parameters ``keys``.

    """
    if set(weights) != set(keys):
        raise ValueError(
            f"updates must all have the same parameters, got {sorted(weights)} and {sorted(keys)}"
        )
    if not keys:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(weights[k], dtype=np.float64).ravel() for k in keys])


def flatten_all(updates: Sequence[Weights]) -> tuple[list[str], np.ndarray]:
    """Stack the flattened updates as the rows of a ``(clients, parameters)`` matrix."""
    keys = list(updates[0])
    return keys, np.stack([flatten(u, keys) for u in updates])


def scale(weights: Weights, factor: float) -> Weights:
    """Multiply every array of ``weights`` by ``factor``, keeping each array's dtype."""
    return {
        k: (np.asarray(v, dtype=np.float64) * factor).astype(v.dtype, copy=False)
        for k, v in weights.items()
    }
