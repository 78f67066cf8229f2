"""A user's own table in simulation: ``dataset=table``, one client per owner of the rows.

``dataset.path`` names a CSV or Parquet file; ``dataset.label`` its label column,
``dataset.partition_by`` the column that names each row's owner (a hospital, a user: one
client each, as flwr-datasets' ``NaturalIdPartitioner`` splits), ``dataset.features`` the
feature columns (comma-separated; every other column by default), ``dataset.task``
``classification`` (labels of any type, numbered in sorted order) or ``regression`` (a number).
Each owner's rows are split into its own training rows and its own test rows
(``dataset.test_fraction``, drawn by seed); the server's test split is the union of the
owners' test parts.

Normalisation never uses statistics of the pooled private data (``dataset.normalization``):

``bounds``
    declared public bounds, ``dataset.bounds="age:0:120,income:0:1e6"`` (every feature; the
    label too for regression under the functional mechanism): features are scaled to [0, 1]
    and clipped; the functional mechanism's models read them (:func:`tasks.data.public_bounds`).
``client``
    each owner's own mean and standard deviation (of its training rows), applied to its own
    rows only: in a deployment each node would compute and keep them.
``none``
    the raw values.

Every check runs when the run is validated, before any process starts, and raises a
``ValueError`` naming the file and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from privacy.functional import FeatureBounds, TargetBounds
from tasks.data.bounds import PublicBounds, register_public_bounds
from tasks.data.registry import DataBundle, DatasetSpec, register_dataset

__all__ = ["parse_bounds", "read_table"]

FORMATS = (".csv", ".parquet")


def _columns(frame: pd.DataFrame) -> str:
    names = [str(c) for c in frame.columns]
    return f"{names[:10]}{' ...' if len(names) > 10 else ''}"


def parse_bounds(text: str, path: Path) -> dict[str, tuple[float, float]]:
    """``"a:0:1,b:-5:5"`` as ``{column: (lower, upper)}`` (``ValueError`` naming the entry)."""
    out: dict[str, tuple[float, float]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, rest = entry.partition(":")
        lo, _, hi = rest.partition(":")
        try:
            lower, upper = float(lo), float(hi)
        except ValueError:
            lower = upper = float("nan")
        if not (np.isfinite(lower) and np.isfinite(upper) and lower < upper):
            raise ValueError(
                f"data file {path}: dataset.bounds entry {entry!r} must be column:lower:upper "
                "with finite lower < upper"
            )
        out[name] = (lower, upper)
    return out


def _require_column(frame: pd.DataFrame, path: Path, setting: str, name: str) -> None:
    if not name:
        raise ValueError(f"{setting} must name a column of {path} for dataset.name=table, got ''")
    if name not in frame.columns:
        raise ValueError(
            f"data file {path}: {setting}={name!r} is not a column (columns: {_columns(frame)})"
        )


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _no_missing(column: pd.Series, path: Path, setting: str, what: str) -> None:
    """``ValueError`` naming the column, the setting, the count and the first bad row."""
    missing = column.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"data file {path}: column {column.name!r} ({setting}) has {int(missing.sum())} "
            f"{what}, first at row {_first_bad(missing)}"
        )


def read_table(spec: DatasetSpec) -> tuple[pd.DataFrame, Path, list[str]]:
    """The file as a frame, checked: label, owner and feature columns (``ValueError``)."""
    if not spec.path:
        raise ValueError("dataset.path must name a CSV or Parquet file for dataset.name=table")
    path = Path(spec.path)
    if path.suffix not in FORMATS:
        raise ValueError(
            f"data file {path}: dataset.path must end in one of {', '.join(FORMATS)}, got "
            f"{path.suffix!r}"
        )
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist (dataset.path)")
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    _require_column(frame, path, "dataset.label", spec.label)
    _require_column(frame, path, "dataset.partition_by", spec.partition_by)
    if spec.label == spec.partition_by:
        raise ValueError(
            f"data file {path}: dataset.label and dataset.partition_by are both {spec.label!r}"
        )
    owners = frame[spec.partition_by]
    _no_missing(owners, path, "dataset.partition_by", "missing owner(s)")
    if owners.nunique() < 2:
        raise ValueError(
            f"data file {path}: column {spec.partition_by!r} (dataset.partition_by) has a "
            f"single value ({owners.iloc[0]!r} in every row): a federation needs at least 2 "
            "owners"
        )
    labels = frame[spec.label]
    _no_missing(labels, path, "dataset.label", "missing (NaN) label(s)")
    if spec.task == "regression" and not _numeric(labels):
        raise ValueError(
            f"data file {path}: column {spec.label!r} (dataset.label) must be numeric for "
            f"dataset.task=regression, got dtype {labels.dtype}"
        )
    if spec.features:
        features = [f.strip() for f in spec.features.split(",") if f.strip()]
        for name in features:
            _require_column(frame, path, "dataset.features", name)
    else:
        features = [str(c) for c in frame.columns if c not in (spec.label, spec.partition_by)]
    if not features:
        raise ValueError(f"data file {path}: no feature columns besides the label and owner")
    for name in features:
        column = frame[name]
        if not _numeric(column):
            raise ValueError(
                f"data file {path}: feature column {name!r} must be numeric, got dtype "
                f"{column.dtype} (encode it, or leave it out of dataset.features)"
            )
        values = column.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"data file {path}: feature column {name!r} has {int(bad.sum())} missing, NaN "
                f"or infinite value(s), first at row {_first_bad(bad)}"
            )
    return frame, path, features


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def _owner_split(owner: np.ndarray, fraction: float, seed: int, path: Path, col: str) -> np.ndarray:
    """Boolean test mask: ``fraction`` of each owner's rows (at least one, never all)."""
    test = np.zeros(len(owner), dtype=bool)
    for o in np.unique(owner):
        rows = np.flatnonzero(owner == o)
        if len(rows) < 2:
            raise ValueError(
                f"data file {path}: owner {o} of column {col!r} (dataset.partition_by) has "
                f"{len(rows)} row: it needs at least 2 (training and test rows)"
            )
        rng = np.random.default_rng([seed, int(o), 0x7AB1])
        n_test = min(max(1, int(round(fraction * len(rows)))), len(rows) - 1)
        test[rng.permutation(rows)[:n_test]] = True
    return test


def _normalise(
    x: np.ndarray, owner: np.ndarray, test: np.ndarray, spec: DatasetSpec, names: list[str]
) -> np.ndarray:
    path = Path(spec.path)
    if spec.normalization == "none":
        return x
    if spec.normalization == "client":  # each owner's own statistics, on its own rows only
        out = np.empty_like(x)
        for o in np.unique(owner):
            rows = owner == o
            ref = x[rows & ~test]
            mean, std = ref.mean(axis=0), ref.std(axis=0)
            out[rows] = (x[rows] - mean) / np.where(std > 0, std, 1.0)
        return out
    bounds = parse_bounds(spec.bounds, path)
    missing = [n for n in names if n not in bounds]
    if missing:
        raise ValueError(
            f"data file {path}: dataset.normalization=bounds needs declared bounds for every "
            f"feature; dataset.bounds has none for column(s) {missing}"
        )
    unknown = [n for n in bounds if n not in names and n != spec.label]
    if unknown:
        raise ValueError(
            f"data file {path}: dataset.bounds names column(s) {unknown} that are neither a "
            f"feature nor dataset.label={spec.label!r}"
        )
    lo = np.array([bounds[n][0] for n in names])
    hi = np.array([bounds[n][1] for n in names])
    register_public_bounds(
        "table",
        PublicBounds(
            FeatureBounds(np.zeros(len(names)), np.ones(len(names)), tuple(names), True),
            TargetBounds(*bounds[spec.label], name=spec.label) if spec.label in bounds else None,
        ),
    )
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


@register_dataset("table", natural=True)
def _table(spec: DatasetSpec) -> DataBundle:
    """The user's table (``dataset.path``): one owner per value of ``dataset.partition_by``."""
    frame, path, features = read_table(spec)
    owner_values = frame[spec.partition_by]
    codes, names = pd.factorize(owner_values, sort=True)
    owner = codes.astype(np.int64)
    x = frame[features].to_numpy(dtype=np.float64)
    if spec.task == "classification":
        codes, classes = pd.factorize(frame[spec.label], sort=True)
        if len(classes) < 2:
            raise ValueError(
                f"data file {path}: column {spec.label!r} (dataset.label) has a single class "
                f"({classes[0]!r}) for dataset.task=classification"
            )
        y: np.ndarray = codes.astype(np.int64)
        num_classes = len(classes)
    else:
        y, num_classes = frame[spec.label].to_numpy(dtype=np.float32), 0
    test = _owner_split(owner, spec.test_fraction, spec.seed, path, spec.partition_by)
    x = _normalise(x, owner, test, spec, features).astype(np.float32)
    return DataBundle(
        "table",
        x[~test],
        y[~test],
        x[test],
        y[test],
        (len(features),),
        num_classes,
        owner_train=owner[~test],
        owner_test=owner[test],
        owner_names=tuple(str(n) for n in names),
    )
