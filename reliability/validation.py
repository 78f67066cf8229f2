"""Checks on a client's reply before it is scored or aggregated.

Shared by the server strategy and deployment code. The checks return a reason string (for the
results table's ``reason`` column) instead of raising: a malformed reply marks that client as
failed for the round; it must not stop the federation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from reliability.types import Weights

__all__ = ["validate_count", "validate_update"]


def _names(keys: set[str]) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


def _dtype_kind(kind: str) -> str:
    return {"f": "a float", "i": "a signed integer", "u": "an unsigned integer"}.get(
        kind, f"kind {kind!r}"
    )


def validate_update(weights: Weights, reference: Weights) -> str | None:
    """Check a client's returned weights against the global model's.

    Parameters
    ----------
    weights : Weights
        What the client returned (parameter name -> array).
    reference : Weights
        The global weights the client was sent.

    Returns
    -------
    str or None
        ``None`` when the reply is usable, else the first problem found, naming the parameter:
        missing or unexpected parameters, a value that is not an array, a wrong shape, a dtype of
        another kind than the reference's (e.g. int for a float parameter; the precision may
        differ and the caller casts), or NaN/Inf values (in floating-point parameters).

    """
    if not isinstance(weights, Mapping):
        return f"update must map parameter names to arrays, got {type(weights).__name__}"
    missing = set(reference) - set(weights)
    if missing:
        return f"missing parameters: {_names(missing)}"
    unexpected = set(weights) - set(reference)
    if unexpected:
        return f"unexpected parameters: {_names(unexpected)}"
    for key, ref in reference.items():
        value = weights[key]
        if not isinstance(value, np.ndarray):
            return f"parameter {key!r} is not a numpy array, got {type(value).__name__}"
        if value.shape != ref.shape:
            return f"parameter {key!r} has shape {value.shape}, expected {ref.shape}"
        if value.dtype.kind != ref.dtype.kind:
            return (
                f"parameter {key!r} has dtype {value.dtype}, expected {_dtype_kind(ref.dtype.kind)}"
                f" dtype like {ref.dtype}"
            )
        if value.dtype.kind in "fc":
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                return f"parameter {key!r} has {bad} NaN/Inf values"
    return None


def validate_count(n: object) -> str | None:
    """Check a client's reported number of training examples.

    Returns
    -------
    str or None
        ``None`` for an integer ``> 0`` (an integral float such as ``120.0`` is accepted, since
        metric records may carry numbers as floats), else the reason.

    """
    if isinstance(n, bool) or not isinstance(n, numbers.Real):
        return f"example count must be an integer > 0, got {n!r}"
    if not isinstance(n, numbers.Integral) and not (
        math.isfinite(float(n)) and float(n).is_integer()
    ):
        return f"example count must be an integer > 0, got {n!r}"
    if n <= 0:
        return f"example count must be an integer > 0, got {n!r}"
    return None
