"""Model registry: a model is a builder registered under ``model.name`` with its properties.

No BatchNorm anywhere (per-sample gradients need layers that treat samples independently).
Each registration states what the rest of the project asks of a model: whether it predicts
a number (regression: MSE loss, ``num_classes == 0``) and, for models the functional
mechanism can serve, the kind of its exact objective (``objective``: ``"logistic"`` or
``"linear"``; :data:`privacy.functional.OBJECTIVES`). The plug-ins (:mod:`tasks.models.zoo`,
:mod:`tasks.models.functional`) are imported by the package's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def model_spec(settings: Any, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
    """The run's :class:`ModelSpec` for data of this shape.

    ``model.name``, ``model.hidden`` and ``dataset.name`` come from the settings (a
    :class:`protocol.settings.RunSettings`): the one place where the server, the client and
    the config checks build it.
    """
    return ModelSpec(
        settings.model_name,
        tuple(input_shape),
        int(num_classes),
        settings.model_hidden,
        settings.dataset_name,
    )


Builder = Callable[[ModelSpec], nn.Module]
MODELS: dict[str, Builder] = {}


@dataclass(frozen=True)
class ModelInfo:
    """A registered model's public properties (what configs are checked against).

    Attributes
    ----------
    regression : bool
        Predicts a number (MSE loss; needs a dataset with ``num_classes == 0``).
    objective : str
        Kind of the exact objective of its trainable head (``"logistic"``, ``"linear"``) for
        models that implement :class:`~tasks.models.functional.FunctionalModel`; empty
        otherwise. A privacy mode whose ``model_capability`` is ``"objective"`` needs it.
    grad_sample_mode : str
        The exact Opacus per-sample-gradient mode DP-SGD uses for this model under
        ``privacy.grad_sample_mode=auto`` (one of :data:`privacy.dpsgd.GRAD_SAMPLE_MODES`):
        the fastest one measured on the CPU by ``bench/dp_overhead.py`` (results in
        ``bench/dp_overhead_results.csv``), ``ew`` for models not measured there.
    """

    regression: bool = False
    objective: str = ""
    grad_sample_mode: str = "ew"

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model offers privacy modes: ``{"objective"}`` for functional models."""
        return frozenset({"objective"}) if self.objective else frozenset()


MODEL_INFO: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, regression: bool = False, objective: str = "", grad_sample_mode: str = "ew"
) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name`` (``model.name`` in the config).

    ``grad_sample_mode`` is :attr:`ModelInfo.grad_sample_mode`: state the measured fastest.
    """

    def deco(fn: Builder) -> Builder:
        MODELS[name] = fn
        MODEL_INFO[name] = ModelInfo(
            regression=regression, objective=objective, grad_sample_mode=grad_sample_mode
        )
        return fn

    return deco


def model_info(name: str) -> ModelInfo:
    """The properties of model ``name``; ``ValueError`` lists the registered models."""
    if name not in MODEL_INFO:
        raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    return MODEL_INFO[name]


def models_with(capability: str) -> frozenset[str]:
    """Registered models that offer ``capability`` (e.g. ``"objective"``)."""
    return frozenset(n for n, info in MODEL_INFO.items() if capability in info.capabilities)


def is_regression(model_name: str) -> bool:
    """Whether ``model.name`` is a regression model (its loss is the MSE)."""
    return model_name in MODEL_INFO and MODEL_INFO[model_name].regression


def regression_models() -> frozenset[str]:
    """Registered models that predict a number."""
    return frozenset(n for n, info in MODEL_INFO.items() if info.regression)


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
            f"must be one of {sorted(regression_models())}, got {spec.name!r}"
        )
    if spec.num_classes != 0 and is_regression(spec.name):
        raise ValueError(
            f"model.name={spec.name!r} is a regression model and needs a regression dataset, "
            f"got dataset.name={spec.dataset!r} with {spec.num_classes} classes"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[spec.name](spec)


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
