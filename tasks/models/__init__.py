"""Models: the registry (:mod:`tasks.models.registry`) and its plug-ins.

:mod:`tasks.models.zoo` (softmax regression, MLP, CNNs) and :mod:`tasks.models.functional`
(the functional mechanism's ``logistic``, ``linear`` and ``fm_network``) register themselves
on import, here.
"""

from tasks.models import functional, zoo  # noqa: F401  (plug-ins: register their models)
from tasks.models.registry import (
    MODEL_INFO,
    MODELS,
    ModelInfo,
    ModelSpec,
    build_model,
    get_weights,
    is_regression,
    model_info,
    model_spec,
    models_with,
    register_model,
    regression_models,
    set_weights,
)

__all__ = [
    "MODELS",
    "MODEL_INFO",
    "ModelInfo",
    "ModelSpec",
    "build_model",
    "get_weights",
    "is_regression",
    "model_info",
    "model_spec",
    "models_with",
    "register_model",
    "regression_models",
    "set_weights",
]
