"""Naturally federated sensor data: seglearn's smartwatch exercise series, one owner a subject.

seglearn 1.2.5 ships ``seglearn/data/watch_dataset.npy`` (Burns et al., "Shoulder physiotherapy
exercise recognition", arXiv:1802.01489): 140 six-channel series (accelerometer in g,
gyroscope in rad/s, 50 Hz), 7 exercises, 10 subjects, each subject doing every exercise
once with each arm (14 series a subject). The file is a pickled object array; it is read
here after checking its sha256, with an unpickler that rebuilds numpy arrays only (the
package's code, and its dependencies, are never imported: ``pip install --no-deps
seglearn==1.2.5``). Importing this module registers ``watch``.

Each subject is one owner (``DataBundle.owner_train``/``owner_test``), and its own 14 series
are split into its parts *by series*, so that no window of one series is in two parts: for
every exercise one of its two series (the arm drawn by ``seed``) is training data, and the
seven others are shuffled (by ``seed``) into 3 validation and 4 test series. Series are cut
into windows of :data:`WINDOW` samples every :data:`STRIDE` samples, left-arm series mirrored
into the right arm's frame (:func:`mirror`, a fixed reflection, so that both arms' series of
an exercise look alike); the values stay in their physical units (about unit scale). The
feature pipeline ``dataset.pipeline`` (:mod:`tasks.data.features`) then makes the examples:
raw windows by default (no statistic of any data is computed).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from tasks.data.features import sensor_bundle, windows
from tasks.data.images import _ArraysOnlyUnpickler
from tasks.data.registry import DataBundle, DatasetSpec, cache_dir, register_dataset
from tasks.data.tabular import package_file

__all__ = ["MIRROR", "STRIDE", "WATCH_SHA256", "WINDOW", "mirror", "split_series", "windows"]

WATCH_SHA256 = "eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537"
WINDOW = 128
"""Samples per window: 2.56 s at 50 Hz, a repetition or two of an exercise."""
STRIDE = 64
"""Samples between the starts of consecutive windows of a series (half a window)."""
VAL_SERIES, TEST_SERIES = 3, 4
"""Of a subject's 7 series that are not training data: validation and test series."""


class _SeriesUnpickler(_ArraysOnlyUnpickler):
    """numpy arrays (and the byte strings their pickles carry), nothing else."""

    _ALLOWED = _ArraysOnlyUnpickler._ALLOWED | {("_codecs", "encode")}


def _read_watch(path: Path) -> dict:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != WATCH_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, expected {WATCH_SHA256}; refusing to load")
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    if version != (1, 0):
        raise ValueError(f"{path}: unexpected .npy version {version}")
    np.lib.format.read_array_header_1_0(stream)
    obj = _SeriesUnpickler(stream, encoding="latin1").load()
    data = obj.item() if isinstance(obj, np.ndarray) else obj
    if not isinstance(data, dict) or not {"X", "y", "subject", "side"} <= set(data):
        raise ValueError(f"{path}: not seglearn's watch data (keys X, y, subject, side)")
    return data


def _watch_arrays() -> dict[str, np.ndarray]:
    """The raw series, converted once into ``cache_dir()/watch-v1.npz`` (no pickle)."""
    npz = cache_dir() / "watch-v1.npz"
    if not npz.exists():
        data = _read_watch(package_file("seglearn", "1.2.5", "data", "watch_dataset.npy"))
        series = [np.asarray(x, dtype=np.float32) for x in data["X"]]
        tmp = npz.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            x=np.concatenate(series),
            lengths=np.array([len(s) for s in series], dtype=np.int64),
            y=np.asarray(data["y"], dtype=np.int64),
            subject=np.asarray(data["subject"], dtype=np.int64),
            side=np.asarray(data["side"], dtype=np.int64),
        )
        os.replace(tmp, npz)
    with np.load(npz, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def split_series(y: np.ndarray, subject: np.ndarray, seed: int) -> np.ndarray:
    """The part of each series: 0 train, 1 validation, 2 test, drawn per subject by ``seed``.

    For each subject and exercise one series is training data; the subject's other series are
    shuffled into :data:`VAL_SERIES` validation and :data:`TEST_SERIES` test series.
    """
    part = np.full(len(y), -1, dtype=np.int64)
    for s in np.unique(subject):
        rng = np.random.default_rng([seed, int(s), 0x3A7C])
        rest = []
        for label in np.unique(y[subject == s]):
            idx = np.flatnonzero((subject == s) & (y == label))
            rng.shuffle(idx)
            part[idx[0]] = 0
            rest.extend(idx[1:].tolist())
        held = rng.permutation(np.array(rest, dtype=np.int64))
        part[held[:VAL_SERIES]] = 1
        part[held[VAL_SERIES:]] = 2
    return part


MIRROR = np.array([-1.0, 1.0, 1.0, 1.0, -1.0, -1.0], dtype=np.float32)
"""Signs that take a left-arm series into the right arm's frame: a reflection of the watch's
x axis, which flips the x component of the accelerometer (a polar vector) and the y and z
components of the gyroscope (an axial vector). The axis was read off the data's per-arm
channel means (gravity's x component changes sign between the arms in every exercise); in a
deployment the watch knows which wrist it is on. The side of each series ships with the data.
Without the mirror a subject's training series (one arm) say little about its test series
(often the other arm): personal and local-only models fell to 25% and 18% accuracy."""


def mirror(series: np.ndarray) -> np.ndarray:
    """A left-arm ``(length, 6)`` series (ax, ay, az, wx, wy, wz) as the right arm would read it."""
    return series * MIRROR


@register_dataset("watch", natural=True)
def _watch(spec: DatasetSpec) -> DataBundle:
    """The smartwatch exercises of seglearn: 10 subjects (owners), 7 classes, 6 x 128 windows.

    Training rows are each subject's training and validation windows (``val_train`` marks
    the validation ones); the test rows are the subjects' test windows, each with its owner.
    The windows go through ``dataset.pipeline`` (:mod:`tasks.data.features`).
    """
    d = _watch_arrays()
    offsets = np.concatenate([[0], np.cumsum(d["lengths"])])
    owner_ids = {int(s): i for i, s in enumerate(np.unique(d["subject"]))}
    series = []
    for i in range(len(d["y"])):
        one = d["x"][offsets[i] : offsets[i + 1]]
        series.append(one if d["side"][i] == 1 else mirror(one))
    return sensor_bundle(
        "watch",
        series,
        d["y"],
        np.array([owner_ids[int(s)] for s in d["subject"]], dtype=np.int64),
        split_series(d["y"], d["subject"], spec.seed),
        num_classes=int(d["y"].max()) + 1,
        owner_names=tuple(f"subject {s}" for s in sorted(owner_ids)),
        window=WINDOW,
        stride=STRIDE,
        pipeline=spec.pipeline,
    )
