"""Conversions between numpy weight dicts and Flower records, shared by both apps."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    """Numpy weights (name -> array) as an ``ArrayRecord``, order preserved."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as numpy weights (name -> array)."""
    return {k: v.numpy() for k, v in record.items()}
