"""Checks on a client's reply before it is scored or aggregated.

Shared by the server strategy and deployment code. The checks return a reason string (for the
results table's ``reason`` column) instead of raising: a malformed reply marks that client as
failed for the round; it must not stop the federation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reliability.types import Weights

__all__ = [
    "NumberRule",
    "cap_counts",
    "norm_outliers",
    "parse_number",
    "parse_numbers",
    "update_norm",
    "validate_count",
    "validate_update",
]


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


@dataclass(frozen=True)
class NumberRule:
    """What one number in a reply must be; :func:`parse_numbers` applies it.

    Attributes
    ----------
    integer : bool
        The value must be integral (``120.0`` is accepted, ``120.5`` is not).
    low, high : float
        Inclusive bounds.
    allow_inf : bool
        ``+inf`` is a legitimate value (a client without privacy reports epsilon = inf).
    allow_nan : bool
        NaN reads as "not reported" (a loss); never for counts, ids or epsilon.
    required : bool
        A missing entry is a problem; otherwise it reads as NaN.

    """

    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    allow_inf: bool = False
    allow_nan: bool = False
    required: bool = True


def parse_number(name: str, value: object, rule: NumberRule) -> tuple[float, str]:
    """``(value, "")`` when ``value`` satisfies ``rule``, else ``(nan, reason)``; never raises.

    Booleans, strings, lists and other non-numbers are refused, and so are NaN, infinities
    (unless ``rule.allow_inf`` and the value is +inf), non-integral values of an integer rule
    and values outside ``[rule.low, rule.high]``. Integers come back as exact ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan, f"{name!r} must be a number, got {type(value).__name__}"
    if isinstance(value, numbers.Integral):
        x: float = int(value)
    else:
        x = float(value)
        if math.isnan(x):
            if rule.allow_nan:
                return math.nan, ""
            return math.nan, f"{name!r} must be a number, got NaN"
        if math.isinf(x):
            if rule.allow_inf and x > 0:
                return math.inf, ""
            return math.nan, f"{name!r} must be finite, got {x}"
        if rule.integer and not x.is_integer():
            return math.nan, f"{name!r} must be an integer, got {x!r}"
    if rule.integer:
        x = int(x)
    if not rule.low <= x <= rule.high:
        return math.nan, f"{name!r} must be in [{rule.low:g}, {rule.high:g}], got {x!r}"
    return x, ""


def parse_numbers(
    record: Mapping[str, object], rules: Mapping[str, NumberRule]
) -> tuple[dict[str, float], str]:
    """Every number of ``rules`` from ``record``; the first problem found, or ``""``."""
    out: dict[str, float] = {}
    for name, rule in rules.items():
        if name not in record:
            if rule.required:
                return out, f"{name!r} is missing"
            out[name] = math.nan
            continue
        value, problem = parse_number(name, record[name], rule)
        if problem:
            return out, problem
        out[name] = value
    return out, ""


def update_norm(update: Weights) -> float:
    """The L2 norm of an update over all its parameters (float64)."""
    return float(
        math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))
    )


def norm_outliers(norms: list[float], factor: float) -> list[bool]:
    """Which norms exceed ``factor`` times the median of the others (needs 3 or more).

    Leave-one-out, so that one huge update cannot raise the median it is compared with.
    With fewer than 3 updates there is no meaningful median: none is an outlier.
    """
    if len(norms) < 3:
        return [False] * len(norms)
    out = []
    for i, x in enumerate(norms):
        others = norms[:i] + norms[i + 1 :]
        out.append(x > factor * float(np.median(others)))
    return out


def cap_counts(counts: list[int], factor: float) -> list[int]:
    """Each example count capped at ``factor`` times the median of the other clients' counts.

    Leave-one-out, so that a client claiming 10^12 examples is capped by the honest ones'
    median; a single client is not capped (its weight is 1 whatever it claims).
    """
    if len(counts) < 2:
        return list(counts)
    out = []
    for i, n in enumerate(counts):
        others = counts[:i] + counts[i + 1 :]
        out.append(int(min(n, max(1, math.floor(factor * float(np.median(others)))))))
    return out
