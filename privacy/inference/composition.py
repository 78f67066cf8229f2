"""Repeated queries of one input compose: basic composition, a per-input cap, an audit.

Every query draws fresh noise, so asking the same input ``k`` times releases ``k``
independent noisy views, and averaging them undoes the noise. **Basic composition** (Dwork,
McSherry, Nissim and Smith 2006; Dwork and Roth 2014, Theorem 3.16): ``k`` mechanisms that are
each ``(epsilon_i, delta_i)``-IP at radius ``alpha`` are together ``(sum epsilon_i, sum
delta_i)``-IP at the same radius (the neighbouring relation, "within ``alpha``", is the same
for every query). For Gaussian mechanisms of one sigma the composition is itself a Gaussian
mechanism with sensitivity ``sqrt(k) D`` (the sum of squared shifts), which gives a smaller
epsilon at the same total delta: :func:`gaussian_composed_epsilon`.

:class:`QueryBudget` counts queries per input key, refuses the query that would exceed the
cap, and reports the composed guarantee so far. It can persist its counts in a JSON file
(written atomically), so a restarted server does not forget what it answered.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privacy.inference.calibration import gaussian_delta
from privacy.inference.mechanisms import InferenceMechanism
from protocol.atomic import write_atomically


def basic_composition(epsilon: float, delta: float, queries: int) -> tuple[float, float]:
    """``(k epsilon, min(1, k delta))`` for ``k = queries`` releases (Theorem 3.16)."""
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise ValueError(f"queries must be an int >= 0, got {queries!r}")
    return epsilon * queries, min(1.0, delta * queries)


def gaussian_composed_epsilon(
    sigma: float, sensitivity: float, queries: int, delta: float
) -> float:
    """Smallest epsilon at which ``queries`` Gaussian releases are ``(epsilon, delta)``-IP.

    ``k`` releases of ``N(0, sigma^2)`` noise on a value of L2 sensitivity ``D`` are exactly a
    Gaussian mechanism of sensitivity ``sqrt(k) D`` (independent coordinates stack), so the
    exact condition of Balle and Wang (Theorem 8) applies; found by bisection on epsilon.
    """
    if queries < 1:
        return 0.0
    d = math.sqrt(queries) * sensitivity
    lo, hi = 0.0, 1.0
    while gaussian_delta(sigma, hi, d) > delta:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-10 * max(hi, 1.0):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(sigma, mid, d) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def input_key(values: np.ndarray) -> str:
    """SHA-256 of a query's float64 bytes: the default key of one input.

    Only an exactly repeated input gets the same key; a querier who perturbs the input
    slightly gets a new one, so key by user or record identity where the caller has it.
    """
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()


class QueryLimitError(ValueError):
    """A query beyond the per-input cap."""


@dataclass
class QueryBudget:
    """Per-input query counts under one mechanism, with an optional cap and file.

    Attributes
    ----------
    mechanism : InferenceMechanism
        The mechanism every counted query uses (its per-query epsilon and delta).
    max_queries : int or None
        At most this many queries per key (``None``: no cap, only reporting).
    path : Path or None
        JSON file of the counts, read at start and rewritten atomically after each charge.
    """

    mechanism: InferenceMechanism
    max_queries: int | None = None
    path: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cap = self.max_queries
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"max_queries must be an int >= 1, got {cap!r}")
        if self.path is not None and Path(self.path).is_file():
            stored = json.loads(Path(self.path).read_text())
            if stored.get("mechanism") != self.mechanism.describe():
                raise ValueError(
                    f"query budget file {self.path} was written for mechanism "
                    f"{stored.get('mechanism')}, not {self.mechanism.describe()}"
                )
            self.counts = {str(k): int(v) for k, v in stored["counts"].items()}

    def charge(self, keys: list[str]) -> None:
        """Count one query for each key; refuse the whole batch if any key would pass the cap."""
        new = dict(self.counts)
        for key in keys:
            new[key] = new.get(key, 0) + 1
            if self.max_queries is not None and new[key] > self.max_queries:
                raise QueryLimitError(
                    f"max_queries={self.max_queries} per input reached for input {key[:12]}...: "
                    f"answering again would compose to epsilon "
                    f"{self.composed(new[key])[0]:g} (basic composition)"
                )
        self.counts = new
        if self.path is not None:
            text = json.dumps({"mechanism": self.mechanism.describe(), "counts": new})
            write_atomically(Path(self.path), text)

    def composed(self, queries: int) -> tuple[float, float]:
        """Basic composition of ``queries`` releases: ``(epsilon, delta)``."""
        return basic_composition(self.mechanism.epsilon, self.mechanism.delta, queries)

    def spent(self, key: str) -> tuple[float, float]:
        """The composed guarantee of the queries counted for ``key`` so far."""
        return self.composed(self.counts.get(key, 0))
