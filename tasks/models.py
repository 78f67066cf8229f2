"""Model registry: logistic regression, an MLP, a small CNN and the functional-mechanism models.

No BatchNorm anywhere (per-sample gradients need layers that treat samples independently);
the CNN uses GroupNorm, as Opacus recommends.

``logistic``, ``linear`` and ``fm_network`` are the models the functional mechanism
(``privacy.mode=functional``) can serve: a fixed, public normalisation of the raw input
into the L2 unit ball (the dataset's declared :class:`~tasks.tabular.PublicBounds`, applied
record by record, no trainable parameter), optionally a fixed public random ``tanh`` layer,
then one trainable linear map without bias (the intercept coordinate plays the bias). They
implement :class:`~tasks.models_functional.FunctionalModel` (in
:mod:`tasks.models_functional`, registered here), so a client can build the exact quadratic
objective of their trainable weights; they are ordinary Opacus-compatible modules too, so
DP-SGD and plain SGD train them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Model name and the shape of the data it reads.

    ``num_classes == 0`` means regression (float targets). ``dataset`` (``dataset.name``)
    lets the functional-mechanism models look up the dataset's declared public bounds.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: int = 64
    dataset: str = ""


Builder = Callable[[ModelSpec], nn.Module]
MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name`` (``model.name`` in the config)."""

    def deco(fn: Builder) -> Builder:
        MODELS[name] = fn
        return fn

    return deco


REGRESSION_MODELS = frozenset({"linear"})
"""Models that predict a number (``num_classes == 0``); every other model classifies."""
FUNCTIONAL_MODELS: frozenset[str] = frozenset({"linear", "logistic", "fm_network"})
"""Models that implement :class:`~tasks.models_functional.FunctionalModel`
(``privacy.mode=functional``)."""


def is_regression(model_name: str) -> bool:
    """Whether ``model.name`` is a regression model (its loss is the MSE)."""
    return model_name in REGRESSION_MODELS


def build_model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """Build a registered model with weights initialised deterministically from ``seed``.

    Raises
    ------
    ValueError
        For an unknown model, or a model that cannot serve the data (a classifier on a
        regression dataset, ``linear`` on classes, ``logistic`` on more than two classes).
    """
    if spec.name not in MODELS:
        raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {spec.name!r}")
    if spec.num_classes == 0 and not is_regression(spec.name):
        raise ValueError(
            f"dataset.name={spec.dataset!r} is a regression dataset (num_classes=0): model.name "
            f"must be one of {sorted(REGRESSION_MODELS)}, got {spec.name!r}"
        )
    if spec.num_classes != 0 and is_regression(spec.name):
        raise ValueError(
            f"model.name={spec.name!r} is a regression model and needs a regression dataset, "
            f"got dataset.name={spec.dataset!r} with {spec.num_classes} classes"
        )
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


@register_model("dpcnn")
def _dpcnn(spec: ModelSpec) -> nn.Module:
    """The small tanh CNN of Tramer & Boneh (ICLR 2021, Table 9), built for DP-SGD.

    Papernot et al. (AAAI 2021, "Tempered Sigmoid Activations for Deep Learning with
    Differential Privacy") showed that bounded activations such as tanh suit clipped, noisy
    gradients. Two strided convolutions keep the parameter count at about 26,000 on MNIST
    (the ``cnn`` above has about 110,000 with ``hidden=64``), so per-sample gradients are
    cheap; ``model.hidden`` is the width of the last hidden layer (the paper uses 32).
    """
    channels, height, width = spec.input_shape
    if height < 14 or width < 14:
        raise ValueError(
            f"model.name='dpcnn' needs images of at least 14x14, got {spec.input_shape}"
        )

    def side(n: int) -> int:  # conv 8/2/3, pool 2/1, conv 4/2/0, pool 2/1
        n = (n + 2 * 3 - 8) // 2 + 1 - 1
        return (n - 4) // 2 + 1 - 1

    return nn.Sequential(
        nn.Conv2d(channels, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * side(height) * side(width), spec.hidden),
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


# The functional-mechanism models live in tasks/models_functional.py; importing it registers
# them (at the end: it uses this module's register_model and ModelSpec).
import tasks.models_functional  # noqa: E402, F401
