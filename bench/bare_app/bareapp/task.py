"""Model, data and training of the bare app, written as a Flower quickstart writes them.

The MLP is a copy of fedpriv's ``mlp`` (``tasks/models/zoo.py``), not an import, so that this
app pays only its own import cost. Data: scikit-learn's digits, a 25% stratified holdout as the
server's test split, the rest split IID over the clients, 10% of each partition for validation
(fedpriv's defaults). In a deployment each node reads its own file (``data-path``: the CSV or
NPZ that ``experiments.local_deployment.export_partitions`` writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_model(hidden: int = 64, features: int = 64, classes: int = 10) -> nn.Module:
    """fedpriv's ``mlp``: Flatten, Linear(features, hidden), ReLU, Linear(hidden, classes)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): digits scaled to [0, 1], 25% stratified test split."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


def load_partition(
    partition_id: int, num_partitions: int, seed: int, data_path: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """This client's examples: its node file when it has one, else its IID share of digits."""
    if data_path:
        return read_node_file(Path(data_path))
    x, y, _, _ = digits_split(seed)
    order = np.random.default_rng(seed).permutation(len(y))
    rows = np.array_split(order, num_partitions)[partition_id]
    return x[rows], y[rows]


def read_node_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A node file: NPZ (``x``, ``y``) or CSV (feature columns, then the label column)."""
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["x"].reshape(len(z["y"]), -1).astype(np.float32), z["y"].astype(np.int64)
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def loaders(
    x: np.ndarray, y: np.ndarray, batch_size: int, val_fraction: float, seed: int
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over one client's examples."""
    n_val = max(1, int(round(val_fraction * len(y))))
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:n_val], order[n_val:]

    def dataset(rows: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]))

    return (
        DataLoader(dataset(train), batch_size=batch_size, shuffle=True),
        DataLoader(dataset(val), batch_size=256),
    )


def train(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int
) -> float:
    """Plain SGD epochs; the mean training loss of the last epoch."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(yb)
            count += len(yb)
    return total / max(count, 1)


def test(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(mean loss, accuracy) on a loader."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for xb, yb in loader:
            out = model(xb)
            loss += float(criterion(out, yb))
            correct += int((out.argmax(1) == yb).sum())
            n += len(yb)
    return loss / max(n, 1), correct / max(n, 1)
