"""The watch data: one client per subject, each subject's series split by series, file checks."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.data import (
    DatasetSpec,
    PartitionSpec,
    client_partitions,
    client_test,
    load_client_data,
    load_dataset,
    sensors,
)
from tasks.data.partition import partition_indices

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("seglearn") is None,
    reason="pip install --no-deps seglearn==1.2.5",
)
WATCH = DatasetSpec("watch")
NATURAL = PartitionSpec("natural", 10)


def test_every_owners_rows_land_in_exactly_one_client() -> None:
    b = load_dataset(WATCH)
    parts = client_partitions(WATCH, NATURAL)
    assert len(parts) == b.owners == 10
    rows = np.concatenate(parts)
    assert len(rows) == len(np.unique(rows)) == len(b.y_train)  # disjoint, and cover the pool
    for pid, idx in enumerate(parts):
        assert set(b.owner_train[idx]) == {pid}  # one owner a client ...
        assert set(idx) == set(np.flatnonzero(b.owner_train == pid))  # ... with all its rows


def test_natural_partition_ignores_num_partitions_and_needs_owners() -> None:
    owners = np.array([2, 0, 1, 0, 2, 2])
    parts = partition_indices(np.zeros(6), PartitionSpec("natural", 2), owners)
    assert [p.tolist() for p in parts] == [[1, 3], [2], [0, 4, 5]]
    with pytest.raises(ValueError, match="naturally federated dataset"):
        partition_indices(np.zeros(6), PartitionSpec("natural", 2))


def test_each_series_is_in_one_part_and_each_subject_trains_on_every_exercise() -> None:
    d = sensors._watch_arrays()
    part = sensors.split_series(d["y"], d["subject"], seed=0)
    assert set(part) == {0, 1, 2}
    for s in np.unique(d["subject"]):
        mine = d["subject"] == s
        assert sorted(d["y"][mine & (part == 0)]) == list(range(7))  # one series a class
        assert (mine & (part == 1)).sum() == sensors.VAL_SERIES
        assert (mine & (part == 2)).sum() == sensors.TEST_SERIES
    assert not np.array_equal(part, sensors.split_series(d["y"], d["subject"], seed=1))


def test_windows_of_a_series_stay_in_its_part() -> None:
    """Each owner's train / validation / test windows are exactly its series' windows of that
    part, so no series contributes windows to two parts."""
    d = sensors._watch_arrays()
    part = sensors.split_series(d["y"], d["subject"], seed=0)
    per_series = (d["lengths"] - sensors.WINDOW) // sensors.STRIDE + 1
    b = load_dataset(WATCH)
    for pid, s in enumerate(np.unique(d["subject"])):
        mine = d["subject"] == s
        data = load_client_data(WATCH, NATURAL, pid, 0.1)
        _, y_test = client_test(b, pid)
        assert len(data.y_train) == per_series[mine & (part == 0)].sum()
        assert len(data.y_val) == per_series[mine & (part == 1)].sum()
        assert len(y_test) == per_series[mine & (part == 2)].sum()
        for labels, p in ((data.y_train, 0), (data.y_val, 1), (y_test, 2)):
            assert set(labels) == set(d["y"][mine & (part == p)])


def test_windows_and_mirror() -> None:
    series = np.arange(300 * 6, dtype=np.float32).reshape(300, 6)
    w = sensors.windows(series, 128, 64)
    assert w.shape == (3, 6, 128) and np.array_equal(w[1, :, 0], series[64])
    assert sensors.windows(series[:100], 128, 64).shape == (0, 6, 128)
    assert np.array_equal(sensors.mirror(sensors.mirror(series)), series)
    assert np.array_equal(sensors.mirror(series)[:, 1:4], series[:, 1:4])


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    src = sensors.package_file("seglearn", "1.2.5", "data", "watch_dataset.npy")
    copy = tmp_path / "watch_dataset.npy"
    shutil.copy(src, copy)
    with open(copy, "r+b") as fh:
        fh.seek(-10, os.SEEK_END)
        fh.write(b"0123456789")
    with pytest.raises(ValueError, match="sha256"):
        sensors._read_watch(copy)


def test_the_unpickler_rebuilds_arrays_only() -> None:
    payload = pickle.dumps(os.getcwd, protocol=2)  # a function, as code would be smuggled
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sensors._SeriesUnpickler(io.BytesIO(payload)).load()
    arrays = pickle.dumps({"X": [np.ones((2, 6))], "y": np.arange(3)}, protocol=2)
    back = sensors._SeriesUnpickler(io.BytesIO(arrays)).load()
    assert np.array_equal(back["y"], np.arange(3))
