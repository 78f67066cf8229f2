"""Inference privacy (Tian and Tandon, arXiv 2411.18746): private predictions for a query.

:mod:`~privacy.inference.mechanisms` (the registry ``none``, ``input_gaussian``,
``output_gaussian``, ``output_laplace``), :mod:`~privacy.inference.calibration` (analytic and
classical Gaussian, Laplace), :mod:`~privacy.inference.lipschitz` (certified Lipschitz bounds
of the model zoo) and :mod:`~privacy.inference.composition` (repeated queries). No Flower.
"""

from privacy.inference.calibration import (
    analytic_gaussian_sigma,
    classical_gaussian_sigma,
    gaussian_delta,
    gaussian_sigma,
    laplace_scale,
)
from privacy.inference.composition import (
    QueryBudget,
    QueryLimitError,
    basic_composition,
    gaussian_composed_epsilon,
    input_key,
)
from privacy.inference.lipschitz import (
    LAYER_RULES,
    InputAffine,
    LipschitzCertificate,
    UnsupportedLayerError,
    fold_input_affine,
    lipschitz_bound,
    register_layer_rule,
)
from privacy.inference.mechanisms import (
    INFERENCE_MECHANISMS,
    InferenceMechanism,
    InferenceSpec,
    InputGaussian,
    NoInferencePrivacy,
    OutputGaussian,
    OutputLaplace,
    make_mechanism,
    register_inference_mechanism,
)

__all__ = [
    "INFERENCE_MECHANISMS",
    "LAYER_RULES",
    "InferenceMechanism",
    "InferenceSpec",
    "InputAffine",
    "InputGaussian",
    "LipschitzCertificate",
    "NoInferencePrivacy",
    "OutputGaussian",
    "OutputLaplace",
    "QueryBudget",
    "QueryLimitError",
    "UnsupportedLayerError",
    "analytic_gaussian_sigma",
    "basic_composition",
    "classical_gaussian_sigma",
    "fold_input_affine",
    "gaussian_composed_epsilon",
    "gaussian_delta",
    "gaussian_sigma",
    "input_key",
    "laplace_scale",
    "lipschitz_bound",
    "make_mechanism",
    "register_inference_mechanism",
    "register_layer_rule",
]
