"""Feature pipelines of sensor series (``dataset.pipeline``): windows, then what a model reads.

A naturally federated sensor dataset (``watch``, ``hapt``) hands :func:`sensor_bundle` its
recorded series, each with a label, an owner and a part (train, validation or test, drawn by
series so that no window of one series is in two parts). Every series is cut into windows of
``window`` samples every ``stride`` samples (:func:`windows`, never across two series), and a
registered pipeline turns the ``(n, channels, window)`` windows into the examples a model reads:

``windows``
    the raw windows, channels first, in their physical units (for ``model=cnn1d``); no
    statistic of any data is computed.
``stats``
    per window and channel its mean, standard deviation, minimum and maximum (``4 * channels``
    features, for ``model=mlp`` / ``softmax``), standardised with each owner's *own* mean and
    standard deviation of its own training windows (never its validation or test windows, never
    pooled over owners): in a deployment each node computes and keeps them, so nothing computed
    from private data leaves a node.

Pipelines register with :func:`register_pipeline`; ``dataset.pipeline=""`` is ``windows``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.data.registry import DataBundle

__all__ = [
    "DEFAULT_PIPELINE",
    "PIPELINES",
    "Pipeline",
    "get_pipeline",
    "per_owner_standardise",
    "register_pipeline",
    "sensor_bundle",
    "windows",
]

DEFAULT_PIPELINE = "windows"
"""What ``dataset.pipeline=""`` means."""
TRAIN, VAL, TEST = 0, 1, 2
"""Parts of a series (:func:`sensor_bundle`'s ``part``)."""


@dataclass(frozen=True)
class Pipeline:
    """A registered feature pipeline.

    Attributes
    ----------
    name
        Its ``dataset.pipeline`` name.
    features
        ``(n, channels, window)`` float32 windows to ``(n, *shape)`` float32 examples; it sees
        one window at a time in effect (no statistic across windows).
    per_owner
        Whether the examples are then standardised with each owner's own training statistics
        (:func:`per_owner_standardise`).
    """

    name: str
    features: Callable[[np.ndarray], np.ndarray]
    per_owner: bool = False


PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(
    name: str, *, per_owner: bool = False
) -> Callable[[Callable[[np.ndarray], np.ndarray]], Callable[[np.ndarray], np.ndarray]]:
    """Register ``fn`` (windows to examples) as pipeline ``name``."""

    def deco(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        PIPELINES[name] = Pipeline(name, fn, per_owner)
        return fn

    return deco


def get_pipeline(name: str) -> Pipeline:
    """The pipeline ``name`` (``""``: :data:`DEFAULT_PIPELINE`).

    Raises
    ------
    ValueError
        Naming ``dataset.pipeline`` and the registered names.
    """
    key = name or DEFAULT_PIPELINE
    if key not in PIPELINES:
        raise ValueError(f"dataset.pipeline must be one of {sorted(PIPELINES)}, got {name!r}")
    return PIPELINES[key]


@register_pipeline("windows")
def _raw(w: np.ndarray) -> np.ndarray:
    return w


@register_pipeline("stats", per_owner=True)
def _stats(w: np.ndarray) -> np.ndarray:
    """Mean, standard deviation, minimum and maximum of each channel of each window."""
    parts = (w.mean(axis=2), w.std(axis=2), w.min(axis=2), w.max(axis=2))
    return np.concatenate(parts, axis=1).astype(np.float32)


def windows(series: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``(n, channels, window)`` windows of one ``(length, channels)`` series (none if short)."""
    starts = range(0, len(series) - window + 1, stride)
    if not starts:
        return np.zeros((0, series.shape[1], window), dtype=np.float32)
    return np.stack([series[i : i + window].T for i in starts]).astype(np.float32)


def per_owner_standardise(
    x: np.ndarray, owner: np.ndarray, fit: np.ndarray
) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Each owner's rows standardised by the mean and std of its own rows where ``fit``.

    Returns the standardised rows and each owner's ``(mean, std)`` (a constant feature keeps
    std 1). An owner without ``fit`` rows is refused: its statistics would have to come from
    someone else's data.
    """
    out = np.empty_like(x)
    stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for o in np.unique(owner):
        rows = owner == o
        ref = x[rows & fit]
        if not len(ref):
            raise ValueError(f"owner {int(o)} has no training windows to standardise by")
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        std = np.where(std > 0, std, 1.0).astype(x.dtype)
        out[rows] = (x[rows] - mean) / std
        stats[int(o)] = (mean, std)
    return out, stats


def sensor_bundle(
    name: str,
    series: Sequence[np.ndarray],
    label: np.ndarray,
    owner: np.ndarray,
    part: np.ndarray,
    *,
    num_classes: int,
    owner_names: tuple[str, ...],
    window: int,
    stride: int,
    pipeline: str,
) -> DataBundle:
    """A naturally federated bundle of windowed series.

    Parameters
    ----------
    name
        The bundle's dataset name.
    series
        ``(length, channels)`` series, one recording unit each (windows never cross two).
    label, owner, part
        Per series: its class, its owner (``0 .. owners - 1``) and its part (0 train,
        1 validation, 2 test). Training rows are the train and validation windows
        (``val_train`` marks the validation ones); test rows the test windows.
    num_classes, owner_names
        Labels are ``0 .. num_classes - 1``; what each owner is called in the data.
    window, stride
        Samples per window, and between the starts of consecutive windows of a series.
    pipeline
        ``dataset.pipeline`` (:func:`get_pipeline`).
    """
    pipe = get_pipeline(pipeline)
    cut = [windows(s, window, stride) for s in series]
    counts = np.array([len(w) for w in cut], dtype=np.int64)
    x = np.concatenate(cut) if cut else np.zeros((0, 1, window), dtype=np.float32)
    x = pipe.features(x)
    row_part = np.repeat(part, counts)
    row_owner = np.repeat(owner, counts).astype(np.int64)
    row_label = np.repeat(label, counts).astype(np.int64)
    if pipe.per_owner:
        x, _ = per_owner_standardise(x, row_owner, row_part == TRAIN)
    test = row_part == TEST
    return DataBundle(
        name,
        x[~test],
        row_label[~test],
        x[test],
        row_label[test],
        tuple(int(n) for n in x.shape[1:]),
        num_classes,
        owner_train=row_owner[~test],
        owner_test=row_owner[test],
        owner_names=owner_names,
        val_train=row_part[~test] == VAL,
    )
