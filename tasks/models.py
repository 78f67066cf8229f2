"""Model registry: logistic regression, an MLP and a small CNN, all Opacus-compatible.

No BatchNorm anywhere (per-sample gradients need layers that treat samples independently);
the CNN uses GroupNorm, as Opacus recommends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Model name and the shape of the data it reads."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: int = 64


Builder = Callable[[ModelSpec], nn.Module]
MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name`` (``model.name`` in the config)."""

    def deco(fn: Builder) -> Builder:
        MODELS[name] = fn
        return fn

    return deco


def build_model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """Build a registered model with weights initialised deterministically from ``seed``."""
    if spec.name not in MODELS:
        raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {spec.name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[spec.name](spec)


def _features(spec: ModelSpec) -> int:
    return int(np.prod(spec.input_shape))


@register_model("logreg")
def _logreg(spec: ModelSpec) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(spec), spec.num_classes))


@register_model("mlp")
def _mlp(spec: ModelSpec) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_features(spec), spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


@register_model("cnn")
def _cnn(spec: ModelSpec) -> nn.Module:
    channels, height, width = spec.input_shape
    if height < 4 or width < 4:
        raise ValueError(f"model.name='cnn' needs images of at least 4x4, got {spec.input_shape}")
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.GroupNorm(4, 32),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), spec.hidden),
        nn.Tanh(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """State dict as numpy arrays (copies, on the CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy weights; raises ``ValueError`` on missing keys or shape mismatch."""
    state = model.state_dict()
    missing = set(state) - set(weights)
    unexpected = set(weights) - set(state)
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    for key, ref in state.items():
        if tuple(ref.shape) != tuple(weights[key].shape):
            raise ValueError(
                f"weight {key!r} has shape {weights[key].shape}, model expects {tuple(ref.shape)}"
            )
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
