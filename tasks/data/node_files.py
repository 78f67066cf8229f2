"""A participant's own data, read from a local file on its node and validated on load.

In a real deployment each SuperNode trains on a file its participant owns, named by the node
config ``data-path``. Three formats, chosen by the file's suffix:

``.csv`` / ``.parquet``
    One row per example: the feature columns, in the model's input order (any names, e.g.
    ``f0 .. f63``; flattened row-major for images), and a ``label`` column (an integer class
    ``0 .. num_classes-1``, or a number for regression datasets such as ``wage``).
``.npz``
    Arrays ``x`` of shape ``(n, *input_shape)`` or ``(n, features)`` and ``y`` of shape ``(n,)``
    (``numpy.savez``; read with ``allow_pickle=False``).

Features must be preprocessed as the run's ``dataset.name`` is (digits scaled to [0, 1],
Adult encoded and normalised with its public bounds, ...): the run's dataset defines the task
(input shape, classes) and the server's test split. ``python -m experiments.deploy
export-partitions`` writes such files from a dataset partition. Every check raises a
``ValueError`` that names the file and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data.partition import ClientData, split_train_val
from tasks.data.registry import DatasetSpec, load_dataset

LABEL_COLUMN = "label"
FORMATS = (".csv", ".parquet", ".npz")


@dataclass(frozen=True)
class TaskShape:
    """What the model expects: one example's shape and the number of classes (0: regression)."""

    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def num_features(self) -> int:
        """Features per example once flattened."""
        return int(np.prod(self.input_shape))


def task_shape(dataset: DatasetSpec) -> TaskShape:
    """The task of the run's dataset (read from its public loader, cached per process).

    Parameters
    ----------
    dataset : DatasetSpec
        The run's ``dataset.*`` settings (:func:`tasks.data.partition.specs_from_settings`).
    """
    bundle = load_dataset(dataset)
    return TaskShape(tuple(bundle.input_shape), int(bundle.num_classes))


def _check_finite(path: Path, name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
        raise ValueError(
            f"data file {path}: column {name!r} has {int(bad.sum())} missing, NaN or infinite "
            f"value(s), first at row {row}"
        )


def _read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if LABEL_COLUMN not in frame.columns:
        raise ValueError(
            f"data file {path}: no {LABEL_COLUMN!r} column (columns: {list(frame.columns)[:8]}"
            f"{' ...' if len(frame.columns) > 8 else ''})"
        )
    for name in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[name]) or pd.api.types.is_bool_dtype(
            frame[name]
        ):
            raise ValueError(
                f"data file {path}: column {name!r} must be numeric, got dtype {frame[name].dtype}"
            )
        _check_finite(path, str(name), frame[name].to_numpy(dtype=np.float64))
    features = frame.drop(columns=[LABEL_COLUMN])
    return features.to_numpy(dtype=np.float32), frame[LABEL_COLUMN].to_numpy()


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        for key in ("x", "y"):
            if key not in d.files:
                raise ValueError(f"data file {path}: no array {key!r} (arrays: {d.files})")
        x, y = np.asarray(d["x"]), np.asarray(d["y"])
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"data file {path}: array 'y' must have shape (n,) with n = len(x) = {len(x)}, "
            f"got {y.shape}"
        )
    for name, arr in (("x", x), ("y", y)):
        if not np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_:
            raise ValueError(f"data file {path}: array {name!r} must be numeric, got {arr.dtype}")
        _check_finite(path, name, arr.astype(np.float64))
    return x.astype(np.float32), y


def read_node_file(path: str | Path, shape: TaskShape) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a node file, ``x`` shaped ``(n, *shape.input_shape)``, checked.

    Raises
    ------
    ValueError
        Naming the file and the column: a missing file or ``label`` column, an unknown
        format, NaN or infinite values, a feature count the model cannot take, labels outside
        ``0 .. num_classes-1`` (or not integers), or no rows.
    """
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(
            f"data file {path}: format must be one of {', '.join(FORMATS)}, got {path.suffix!r}"
        )
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist (node config data-path)")
    x, y = _read_table(path) if path.suffix != ".npz" else _read_npz(path)
    what = "feature columns" if path.suffix != ".npz" else "features per row of 'x'"
    if len(y) == 0:
        raise ValueError(f"data file {path} has no rows")
    features = int(np.prod(x.shape[1:]))
    if features != shape.num_features:
        raise ValueError(
            f"data file {path}: {features} {what} besides {LABEL_COLUMN!r}, but the model "
            f"expects {shape.num_features} (input shape {shape.input_shape})"
        )
    label = LABEL_COLUMN if path.suffix != ".npz" else "y"
    if shape.num_classes > 0:
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"data file {path}: column {label!r} must hold integer classes")
        bad = (y < 0) | (y >= shape.num_classes)
        if bad.any():
            raise ValueError(
                f"data file {path}: column {label!r} must be in 0..{shape.num_classes - 1}, got "
                f"{y[bad][0].item()!r} at row {int(np.flatnonzero(bad)[0])}"
            )
        y = y.astype(np.int64)
    else:
        y = y.astype(np.float32)
    return x.reshape(len(x), *shape.input_shape), y


def load_node_data(
    path: str | Path, shape: TaskShape, val_fraction: float, seed: int, partition_id: int
) -> ClientData:
    """A node file as :class:`ClientData`, split into train and validation like a partition."""
    x, y = read_node_file(path, shape)
    train, val = split_train_val(np.arange(len(y)), val_fraction, seed, partition_id)
    return ClientData(x[train], y[train], x[val], y[val], shape.input_shape, shape.num_classes)


def write_node_file(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write ``(x, y)`` in the format the suffix names (the layout :func:`read_node_file` reads)."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(
            f"data file {path}: format must be one of {', '.join(FORMATS)}, got {path.suffix!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, x=x, y=y)
        return path
    flat = x.reshape(len(x), -1)
    frame = pd.DataFrame(flat, columns=[f"f{i}" for i in range(flat.shape[1])])
    frame[LABEL_COLUMN] = y
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path
