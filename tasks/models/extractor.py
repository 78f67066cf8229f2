"""Public feature extractors for ``fm_network``: hidden layers that never see a client's data.

The functional mechanism perturbs the objective of the head only, so every layer below it
must be independent of the private records (``privacy/functional/network.py`` says why).
Two extractors, both ending in ``[tanh(h), 1] / sqrt(d + 1)`` so every feature row lies in the
L2 unit ball (the sensitivities' assumption), ``d = model.hidden``:

* :class:`PublicConvFeatures`: a small CNN trained on the dataset's declared public records
  (``DataBundle.x_public``; for MNIST the official 10,000 validation images, held by no
  client) with a ``d``-unit ``tanh`` bottleneck. It is trained once per machine with a fixed
  public seed and cached (:func:`public_extractor_state`); the server's copy travels in the
  global model as buffers, so every client uses the server's. Which weights the server picks
  changes nothing in the guarantee: the client bounds each row itself.
* the data-independent fallback for datasets that declare no public records (digits, the
  tabular sets): :class:`tasks.models.functional.PublicTanhFeatures`, a seeded random
  ``tanh`` layer.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from torch import nn

from protocol.atomic import write_with
from tasks.data.registry import DatasetSpec, cache_dir, load_dataset

EXTRACTOR_VERSION = 1
EXTRACTOR_SEED = 20_190_419
"""Public seed of the extractor's initialisation and batches (not a secret, not the run seed)."""
EXTRACTOR_EPOCHS = 4
_CONV = (8, 16)


def _side(n: int) -> int:
    return (n // 2) // 2


class _Trainable(nn.Module):
    """The CNN as trained on the public records: conv-tanh-pool x2, fc-tanh (``d``), classifier."""

    def __init__(self, channels: int, side: tuple[int, int], dim: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, _CONV[0], 5, padding=2)
        self.conv2 = nn.Conv2d(_CONV[0], _CONV[1], 5, padding=2)
        self.fc = nn.Linear(_CONV[1] * _side(side[0]) * _side(side[1]), dim)
        self.out = nn.Linear(dim, classes)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        h = F.max_pool2d(torch.tanh(self.conv2(h)), 2)
        return torch.tanh(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bottleneck(x))


def _check_images(input_shape: tuple[int, ...], dataset: str) -> None:
    if len(input_shape) != 3 or min(input_shape[1:]) < 8:
        raise ValueError(
            f"model.name='fm_network' with a public CNN extractor needs images of shape "
            f"(channels, >=8, >=8), got dataset.name={dataset!r} with records of shape "
            f"{input_shape}"
        )


def train_public_extractor(
    x_public: np.ndarray, y_public: np.ndarray, classes: int, dim: int
) -> dict[str, np.ndarray]:
    """Train the CNN on public records only; return its bottleneck's weights (numpy).

    Plain Adam on cross-entropy, :data:`EXTRACTOR_EPOCHS` epochs, batches of 128, from the
    public seed :data:`EXTRACTOR_SEED`: a deterministic function of public data.
    """
    x = torch.as_tensor(np.asarray(x_public, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y_public, dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EXTRACTOR_SEED)
        net = _Trainable(int(x.shape[1]), (int(x.shape[2]), int(x.shape[3])), dim, classes)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(EXTRACTOR_SEED)
        for _ in range(EXTRACTOR_EPOCHS):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), 128):
                idx = order[start : start + 128]
                opt.zero_grad()
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
    return {
        k: v.detach().cpu().numpy().astype(np.float32)
        for k, v in net.state_dict().items()
        if not k.startswith("out.")
    }


def public_extractor_state(dataset: str, dim: int) -> dict[str, np.ndarray] | None:
    """The public CNN's weights for ``dataset``, trained once and cached, or ``None``.

    ``None`` when the dataset declares no public records: the caller falls back to the
    data-independent random layer.

    The cache key is the dataset, ``dim``, the extractor's version and a digest of the public
    records, so a changed public split retrains.
    """
    if not dataset:
        return None
    bundle = load_dataset(DatasetSpec(dataset))
    if bundle.x_public is None or bundle.y_public is None:
        return None
    _check_images(bundle.input_shape, dataset)
    digest = hashlib.sha256(np.ascontiguousarray(bundle.x_public).tobytes()).hexdigest()[:12]
    path = cache_dir() / f"fm-extractor-v{EXTRACTOR_VERSION}-{dataset}-d{dim}-{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    state = train_public_extractor(bundle.x_public, bundle.y_public, bundle.num_classes, dim)
    write_with(path, lambda tmp: _savez(tmp, state))
    return state


def _savez(path: Path, state: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:  # a handle: numpy.savez would append ".npz" to a path
        np.savez(handle, **state)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def _buffer(module: nn.Module, name: str, value: np.ndarray) -> None:
    module.register_buffer(name, torch.tensor(np.asarray(value), dtype=torch.float32))


class PublicConvFeatures(nn.Module):
    """The public CNN as a fixed feature map: ``[tanh(fc(conv(x))), 1] / sqrt(d + 1)``.

    Its weights are persistent buffers (sent with the global model, never trained, no
    gradient), so DP-SGD and the functional mechanism train the same head on the same
    features. Input: raw images in ``[0, 1]``, shape ``(n, channels, height, width)``.
    """

    conv1_weight: torch.Tensor
    conv1_bias: torch.Tensor
    conv2_weight: torch.Tensor
    conv2_bias: torch.Tensor
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor

    def __init__(self, state: dict[str, np.ndarray], input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        for key in ("conv1", "conv2", "fc"):
            _buffer(self, f"{key}_weight", state[f"{key}.weight"])
            _buffer(self, f"{key}_bias", state[f"{key}.bias"])
        side = (_side(self.input_shape[1]), _side(self.input_shape[2]))
        expected = _CONV[1] * side[0] * side[1]
        if self.fc_weight.shape[1] != expected:
            raise ValueError(
                f"the public extractor expects records of shape {self.input_shape} "
                f"({expected} inputs to its last layer), got weights for {self.fc_weight.shape[1]}"
            )

    @property
    def dim(self) -> int:
        """Feature dimension: bottleneck units + intercept."""
        return int(self.fc_weight.shape[0]) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bounded features of raw images (``||.||_2 <= 1``)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the public extractor takes records of shape {self.input_shape}, got "
                f"{tuple(x.shape[1:])}"
            )
        dtype = x.dtype
        h = F.conv2d(x, self.conv1_weight.to(dtype), self.conv1_bias.to(dtype), padding=2)
        h = F.max_pool2d(torch.tanh(h), 2)
        h = F.conv2d(h, self.conv2_weight.to(dtype), self.conv2_bias.to(dtype), padding=2)
        h = F.max_pool2d(torch.tanh(h), 2)
        h = torch.tanh(F.linear(h.flatten(1), self.fc_weight.to(dtype), self.fc_bias.to(dtype)))
        ones = torch.ones(len(h), 1, dtype=dtype, device=h.device)
        out = torch.cat([h, ones], dim=1) / math.sqrt(self.dim)
        norms = out.norm(dim=1, keepdim=True)
        return torch.where(norms > 1.0, out / (norms * (1.0 + 1e-6)), out)

    def features(self, x: np.ndarray) -> np.ndarray:
        """The same map (numpy in, float64 out), projected into the unit ball in float64.

        What the functional mechanism builds its release from: each row is a function of its
        record alone (float32 convolutions, fixed weights), and the final projection, in
        float64, makes ``||row||_2 <= 1`` hold whatever the weights (the server chose them).
        """
        with torch.no_grad():
            raw = self.forward(torch.as_tensor(np.asarray(x, dtype=np.float32)))
        out = raw.numpy().astype(np.float64)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.where(norms > 1.0, out / (norms * (1.0 + 1e-12)), out)
