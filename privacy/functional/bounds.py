"""Data-independent, per-record normalisation for the functional mechanism.

The sensitivities of :mod:`privacy.functional` (Zhang, Zhang, Xiao, Yang, Winslett,
"Functional Mechanism: Regression Analysis under Differential Privacy", PVLDB 5(11), 2012)
hold only for records that satisfy the paper's assumption (Section 2/3): every record
``x`` has ``sqrt(sum_j x_j^2) <= 1`` (so also ``|x_j| <= 1``), and the label lies in
``[-1, 1]`` (linear regression) or ``{0, 1}`` (logistic regression). This module enforces
that by a map that depends on one record and on *public* declared bounds only: using the
private data's own minimum/maximum would make every record's normalised value depend on
the other records, and the sensitivity analysis would no longer hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureBounds", "TargetBounds"]

FloatArray = npt.NDArray[np.float64]
RowMode = Literal["scale", "project"]
_ROW_MODES = ("scale", "project")


def _as_vector(values: object, what: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class FeatureBounds:
    """Public, declared bounds per feature column, and the normalisation they define.

    ``normalise`` maps each record independently of every other record:

    1. check for NaN (``ValueError`` naming the column: DP needs a defined value);
    2. clip column ``j`` to the declared ``[lower[j], upper[j]]`` (``+-inf`` clips too);
    3. map affinely to ``[-1, 1]``: ``z_j = 2 (x_j - lower_j) / (upper_j - lower_j) - 1``;
    4. optionally append an intercept coordinate ``z_0 = 1``;
    5. bring the row into the L2 unit ball:

       * ``rows="scale"`` (default): divide every row by ``sqrt(D)`` (``D`` = number of
         coordinates incl. the intercept). A fixed linear map, so a linear/logistic model
         on ``z`` is exactly a linear/logistic model on the clipped features.
       * ``rows="project"``: the intercept coordinate is fixed at ``1/sqrt(D)`` and the
         feature part is projected onto the ball of radius ``sqrt(1 - 1/D)`` (``1`` without
         intercept): larger features for rows of small norm, but not a linear map.

    Either way every normalised row satisfies ``||z||_2 <= 1`` and ``|z_j| <= 1``, which is
    the assumption under which the sensitivities ``2 (d+1)^2`` (Section 4) and
    ``d^2/4 + 3d`` (Section 5) of Zhang et al. (2012) hold, with ``d = D`` the number of
    normalised coordinates (use :attr:`dim`).

    Attributes
    ----------
    lower, upper : numpy.ndarray
        Declared public bounds per column (after any public per-record transform such as
        ``log1p``); ``lower < upper``, both finite. They must not be learnt from the
        private data.
    names : tuple of str
        Column names, used in error messages.
    intercept : bool, default False
        Append a constant intercept coordinate (so :attr:`dim` is ``len(names) + 1``).
    rows : {"scale", "project"}, default "scale"
        How rows are brought into the L2 unit ball (see above).

    Raises
    ------
    ValueError
        If the shapes disagree, a bound is not finite, or a column is constant in its
        declared bounds (``lower == upper``) or has ``lower > upper``; the message names
        the column.

    """

    lower: FloatArray
    upper: FloatArray
    names: tuple[str, ...]
    intercept: bool = False
    rows: RowMode = field(default="scale")

    def __post_init__(self) -> None:
        lower = _as_vector(self.lower, "bounds.lower")
        upper = _as_vector(self.upper, "bounds.upper")
        names = tuple(str(n) for n in self.names)
        if not (len(lower) == len(upper) == len(names)) or len(names) == 0:
            raise ValueError(
                "bounds.lower, bounds.upper and bounds.names must have the same non-zero "
                f"length, got {len(lower)}, {len(upper)}, {len(names)}"
            )
        if self.rows not in _ROW_MODES:
            raise ValueError(f"bounds.rows must be one of {_ROW_MODES}, got {self.rows!r}")
        for name, lo, hi in zip(names, lower, upper, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"bounds for column {name!r} must be finite, got [{lo}, {hi}]")
            if lo == hi:
                raise ValueError(
                    f"column {name!r} is constant in its declared bounds [{lo}, {hi}]; "
                    "drop it or declare a non-empty range"
                )
            if lo > hi:
                raise ValueError(f"bounds for column {name!r} need lower < upper, got [{lo}, {hi}]")
        lower.setflags(write=False)
        upper.setflags(write=False)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "names", names)

    @property
    def dim(self) -> int:
        """Number of coordinates of a normalised row (features plus intercept)."""
        return len(self.names) + int(self.intercept)

    def normalise(self, x: npt.ArrayLike) -> FloatArray:
        """Normalise records into the L2 unit ball, each record on its own.

        Parameters
        ----------
        x : array_like of shape (n, len(names))
            Raw features (already transformed by any public per-record transform).

        Returns
        -------
        numpy.ndarray of shape (n, dim), float64
            Rows with ``||z||_2 <= 1`` (hence ``|z_j| <= 1``).

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape or a column contains NaN (named in the message).

        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.names):
            raise ValueError(
                f"features must have shape (n, {len(self.names)}) for bounds {self.names}, "
                f"got {arr.shape}"
            )
        nan_cols = np.flatnonzero(np.isnan(arr).any(axis=0))
        if nan_cols.size:
            bad = [self.names[j] for j in nan_cols]
            raise ValueError(f"column {bad[0]!r} contains NaN (columns with NaN: {bad})")
        clipped = np.clip(arr, self.lower, self.upper)
        z = 2.0 * (clipped - self.lower) / (self.upper - self.lower) - 1.0
        z = np.clip(z, -1.0, 1.0)  # guard against rounding just outside [-1, 1]
        dim = self.dim
        if self.rows == "scale":
            if self.intercept:
                z = np.hstack([z, np.ones((len(z), 1))])
            out = z / math.sqrt(dim)
        else:
            radius = math.sqrt(1.0 - 1.0 / dim) if self.intercept else 1.0
            norms = np.linalg.norm(z, axis=1, keepdims=True)
            out = z * (radius / np.maximum(norms, radius))
            if self.intercept:
                out = np.hstack([out, np.full((len(z), 1), 1.0 / math.sqrt(dim))])
        # Floating point: a row may come out at 1 + 1e-16; shrink it so ||z|| <= 1 holds exactly.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.where(norms > 1.0, out / (norms * (1.0 + 1e-12)), out)


@dataclass(frozen=True)
class TargetBounds:
    """Public, declared bounds of a regression target, mapped to ``[-1, 1]``.

    Linear regression under the functional mechanism (Zhang et al. 2012, Section 4) needs
    ``y in [-1, 1]`` for ``Delta = 2 (d+1)^2``. ``normalise`` clips ``y`` to the declared
    ``[lower, upper]`` and maps it affinely to ``[-1, 1]``, record by record;
    ``denormalise`` maps predictions back (post-processing).

    Attributes
    ----------
    lower, upper : float
        Declared public bounds, ``lower < upper``, not learnt from the private data.
    name : str
        Name of the target, used in error messages.

    """

    lower: float
    upper: float
    name: str = "y"

    def __post_init__(self) -> None:
        lo, hi = float(self.lower), float(self.upper)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"bounds for target {self.name!r} need finite lower < upper, got [{lo}, {hi}]"
            )

    def normalise(self, y: npt.ArrayLike) -> FloatArray:
        """Clip to ``[lower, upper]`` and map to ``[-1, 1]``; ``ValueError`` on NaN."""
        arr = np.asarray(y, dtype=np.float64).reshape(-1)
        if np.isnan(arr).any():
            raise ValueError(f"target {self.name!r} contains NaN")
        z = 2.0 * (np.clip(arr, self.lower, self.upper) - self.lower) / (self.upper - self.lower)
        return np.clip(z - 1.0, -1.0, 1.0)

    def denormalise(self, z: npt.ArrayLike, clip: bool = True) -> FloatArray:
        """Inverse of the affine map of :meth:`normalise`.

        With ``clip`` (default), predictions are first clipped to ``[-1, 1]``, i.e. to the
        declared target range: public post-processing that keeps a noisy model's
        predictions in range.
        """
        arr = np.asarray(z, dtype=np.float64)
        if clip:
            arr = np.clip(arr, -1.0, 1.0)
        return self.lower + (arr + 1.0) * (self.upper - self.lower) / 2.0
