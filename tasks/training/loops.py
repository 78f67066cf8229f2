"""Plain PyTorch training and evaluation loops, and device selection.

Classification (int64 labels) uses cross-entropy and reports accuracy; regression (float
targets, ``num_classes == 0``) uses the mean squared error, and its accuracy is NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``/``cuda[:N]`` are taken as given.

    Raises
    ------
    ValueError
        If CUDA is asked for and none is available.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={preference!r} but no CUDA device is available; use device=cpu")
    return torch.device(preference)


def make_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator, shuffle: bool = True
) -> DataLoader:
    """A DataLoader over in-memory arrays, shuffled with an explicit generator."""
    ds = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass
class TrainStats:
    """What a local training session did."""

    loss: float
    steps: int
    examples_seen: int


def _loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for integer labels, squared error for float targets."""
    if y.is_floating_point():
        return nn.functional.mse_loss(out.reshape(-1), y.to(out.dtype), reduction=reduction)
    return nn.functional.cross_entropy(out, y, reduction=reduction)


def train_epochs(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    empty_step: Callable[[], None] | None = None,
    reduce: Callable[[torch.Tensor], Any] | None = None,
) -> TrainStats:
    """Run ``epochs`` passes of SGD (cross-entropy, or MSE for float targets); mean step loss.

    ``empty_step`` is called for an empty batch (Poisson sampling can draw one): DP-SGD still
    takes its noised step there (:meth:`privacy.dpsgd.PrivateTraining.empty_step`), as the
    accounting assumes; without it an empty batch is skipped. ``reduce`` turns the batch's
    per-sample losses into the loss to call ``backward()`` on (DP-SGD's
    :meth:`privacy.dpsgd.PrivateTraining.loss`, which ghost clipping needs); without it, the
    mean.
    """
    model.train()
    total, steps, seen = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb) == 0:
                if empty_step is not None:
                    empty_step()
                    steps += 1
                continue
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = _loss(out, yb) if reduce is None else reduce(_loss(out, yb, reduction="none"))
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            seen += len(yb)
    return TrainStats(total / max(steps, 1), steps, seen)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)``.

    Classification: (mean cross-entropy, accuracy). Regression (float ``y``): (MSE, NaN).
    """
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    regression = np.issubdtype(np.asarray(y).dtype, np.floating)
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.as_tensor(x[start : start + batch_size]).to(device)
        yb = torch.as_tensor(y[start : start + batch_size]).to(device)
        out = model(xb)
        loss += float(_loss(out, yb, reduction="sum"))
        if not regression:
            correct += int((out.argmax(1) == yb).sum())
    return loss / len(y), (float("nan") if regression else correct / len(y))
