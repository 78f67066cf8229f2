"""A node's own data file: CSV, Parquet and NumPy round trips, and every validation error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.data import TaskShape, load_node_data, read_node_file, write_node_file

DIGITS = TaskShape((1, 8, 8), 10)


def _data(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_round_trip_in_every_format(tmp_path: Path, suffix: str) -> None:
    x, y = _data()
    path = write_node_file(tmp_path / f"node{suffix}", x, y)
    x2, y2 = read_node_file(path, DIGITS)
    assert x2.shape == (20, 1, 8, 8) and x2.dtype == np.float32
    np.testing.assert_allclose(x2, x, rtol=1e-6)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.int64


def test_split_into_train_and_validation(tmp_path: Path) -> None:
    x, y = _data(40)
    path = write_node_file(tmp_path / "n.npz", x, y)
    data = load_node_data(path, DIGITS, val_fraction=0.25, seed=0, partition_id=1)
    assert len(data.y_train) == 30 and len(data.y_val) == 10
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert sorted(np.concatenate([data.y_train, data.y_val]).tolist()) == sorted(y.tolist())


def test_regression_labels_stay_float(tmp_path: Path) -> None:
    path = tmp_path / "wage.csv"
    pd.DataFrame({"a": [0.1, 0.2], "b": [0.3, 0.4], "label": [4.5, 4.7]}).to_csv(path, index=False)
    _, y = read_node_file(path, TaskShape((2,), 0))
    assert y.dtype == np.float32 and y.tolist() == pytest.approx([4.5, 4.7])


def _csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "node.csv"
    frame.to_csv(path, index=False)
    return path


def _frame(n: int = 5, features: int = 64) -> pd.DataFrame:
    frame = pd.DataFrame(np.zeros((n, features)), columns=[f"f{i}" for i in range(features)])
    frame["label"] = 1
    return frame


def test_missing_label_column_names_file_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, _frame().drop(columns=["label"]))
    with pytest.raises(ValueError, match=rf"data file {path}: no 'label' column"):
        read_node_file(path, DIGITS)


def test_nan_names_the_column_and_row(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[3, "f12"] = np.nan
    path = _csv(tmp_path, frame)
    with pytest.raises(
        ValueError, match=r"column 'f12' has 1 missing, NaN or infinite value\(s\), first at row 3"
    ):
        read_node_file(path, DIGITS)


def test_wrong_feature_count_names_the_model_shape(tmp_path: Path) -> None:
    path = _csv(tmp_path, _frame(features=63))
    with pytest.raises(
        ValueError, match=r"63 feature columns besides 'label', but the model expects 64"
    ):
        read_node_file(path, DIGITS)


def test_labels_outside_the_classes_are_refused(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[2, "label"] = 10
    path = _csv(tmp_path, frame)
    with pytest.raises(ValueError, match=r"column 'label' must be in 0..9, got 10 at row 2"):
        read_node_file(path, DIGITS)
    frame["label"] = frame["label"].astype(float)
    frame.loc[2, "label"] = 1.5
    path = _csv(tmp_path, frame)
    with pytest.raises(ValueError, match="column 'label' must hold integer classes"):
        read_node_file(path, DIGITS)


def test_text_column_is_refused(tmp_path: Path) -> None:
    frame = _frame()
    frame["f3"] = "x"
    path = _csv(tmp_path, frame)
    with pytest.raises(ValueError, match="column 'f3' must be numeric"):
        read_node_file(path, DIGITS)


def test_npz_without_y_and_unknown_format_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "n.npz"
    np.savez(path, x=np.zeros((3, 64)))
    with pytest.raises(ValueError, match=r"no array 'y'"):
        read_node_file(path, DIGITS)
    with pytest.raises(
        ValueError, match=r"format must be one of \.csv, \.parquet, \.npz, got '\.json'"
    ):
        read_node_file(tmp_path / "n.json", DIGITS)
    with pytest.raises(ValueError, match="does not exist"):
        read_node_file(tmp_path / "absent.csv", DIGITS)


def test_npz_infinity_in_x_is_refused(tmp_path: Path) -> None:
    x, y = _data(4)
    x[1, 0, 0, 0] = np.inf
    path = write_node_file(tmp_path / "n.npz", x, y)
    with pytest.raises(ValueError, match=r"array|column 'x'"):
        read_node_file(path, DIGITS)
