"""Functional mechanism (objective perturbation), framework-free: numpy + torch only.

Zhang, Zhang, Xiao, Yang, Winslett, "Functional Mechanism: Regression Analysis under
Differential Privacy", PVLDB 5(11), 2012 (FM).

* :class:`FeatureBounds`, :class:`TargetBounds` (:mod:`privacy.functional.bounds`):
  public, per-record normalisation into the L2 unit ball, the assumption of FM's bounds.
* :class:`QuadraticObjective` and the builders/sensitivities
  (:mod:`privacy.functional.objective`): linear regression ``sum (y - x^T w)^2`` with
  ``Delta = 2 (d+1)^2`` (FM Sec. 4); logistic regression by its second-order Taylor
  expansion with ``Delta = d^2/4 + 3d`` (FM Sec. 5), and tighter bounds derived from the
  enforced L2 normalisation (``bound="l2"``); :func:`minimise`, :func:`stabilise`
  and :func:`gradient_steps` with FM Sec. 6's regularisation and spectral trimming.
* :class:`FunctionalMechanism` and :func:`fit_private`
  (:mod:`privacy.functional.mechanism`): FM Algorithm 1, ``Laplace(Delta/epsilon)`` noise
  drawn once on every coefficient but the constant (which does not move the minimiser and
  is not released) from a :class:`numpy.random.Generator`; the release is
  ``epsilon``-DP (pure; FM Lemma 1 / Theorem 1) and everything after it post-processing.
* :class:`PublicFeatureNetwork` (:mod:`privacy.functional.network`): a neural network whose
  hidden layer never sees private data, with the functional mechanism on its output layer.
* :func:`solve_summed` and friends (:mod:`privacy.functional.aggregate`): the server sums
  the clients' released noisy objectives and minimises the sum once (post-processing).
* :class:`SoftmaxMechanism` (:mod:`privacy.functional.softmax`): the softmax cross-entropy
  expanded to second order, released once for all ``K`` classes (class sums and the upper
  triangle of the Gram matrix), ``Delta = 2 sqrt(d) + d + 1`` whatever ``K``.
* :data:`FUNCTIONAL_NOISES` (:mod:`privacy.functional.noise`): ``privacy.functional_noise``,
  FM's pure-DP snapped ``laplace`` (default) or the analytic ``gaussian`` mechanism at the
  L2 sensitivity, ``(epsilon, delta)``-DP, one sampled-Gaussian ledger event (softmax head).
* :data:`HEAD_KINDS` (:mod:`privacy.functional.heads`): per objective kind, what a head
  releases and how a client and the server solve it; the trainer and server ask it.

This package never imports ``flwr`` or any project package outside :mod:`privacy`.
"""

from __future__ import annotations

from typing import Any

from privacy.functional.aggregate import (
    objectives_from_arrays,
    objectives_to_arrays,
    release_shapes,
    solve_summed,
    sum_objectives,
    summed_noise_ridge,
)
from privacy.functional.bounds import FeatureBounds, TargetBounds
from privacy.functional.heads import (
    HEAD_KINDS,
    HeadKind,
    RowObjectives,
    SoftmaxHead,
    head_kind,
    register_head_kind,
)
from privacy.functional.mechanism import (
    OBJECTIVES,
    SENSITIVITY_BOUNDS,
    FunctionalMechanism,
    ObjectiveKind,
    default_ridge,
    fit_private,
    head_mechanism,
    make_noise_generator,
    register_objective,
)
from privacy.functional.network import PublicFeatureNetwork
from privacy.functional.noise import (
    FUNCTIONAL_NOISES,
    FunctionalNoise,
    GaussianNoise,
    LaplaceNoise,
    functional_noise,
    register_functional_noise,
)
from privacy.functional.objective import (
    QuadraticObjective,
    gradient_steps,
    linear_regression_objective,
    linear_sensitivity,
    linear_sensitivity_l2,
    logistic_regression_objective,
    logistic_sensitivity,
    logistic_sensitivity_l2,
    minimise,
    stabilise,
)
from privacy.functional.softmax import (
    SoftmaxGaussianMechanism,
    SoftmaxMechanism,
    SoftmaxStatistics,
    softmax_ridge,
    softmax_sensitivity,
    softmax_sensitivity_l2,
    solve_softmax,
)
from privacy.modes import PrivacyMode, register_mode

__all__ = [
    "FUNCTIONAL_NOISES",
    "HEAD_KINDS",
    "OBJECTIVES",
    "SENSITIVITY_BOUNDS",
    "FeatureBounds",
    "FunctionalMechanism",
    "FunctionalNoise",
    "GaussianNoise",
    "HeadKind",
    "LaplaceNoise",
    "ObjectiveKind",
    "PublicFeatureNetwork",
    "QuadraticObjective",
    "RowObjectives",
    "SoftmaxGaussianMechanism",
    "SoftmaxHead",
    "SoftmaxMechanism",
    "SoftmaxStatistics",
    "TargetBounds",
    "default_ridge",
    "fit_private",
    "functional_noise",
    "head_kind",
    "head_mechanism",
    "gradient_steps",
    "linear_regression_objective",
    "linear_sensitivity",
    "linear_sensitivity_l2",
    "logistic_regression_objective",
    "logistic_sensitivity",
    "logistic_sensitivity_l2",
    "make_noise_generator",
    "minimise",
    "objectives_from_arrays",
    "objectives_to_arrays",
    "register_functional_noise",
    "register_head_kind",
    "register_objective",
    "release_shapes",
    "softmax_ridge",
    "softmax_sensitivity",
    "softmax_sensitivity_l2",
    "solve_softmax",
    "solve_summed",
    "stabilise",
    "sum_objectives",
    "summed_noise_ridge",
]


def _spends_delta(settings: Any) -> bool:
    """``privacy.functional_noise=gaussian`` spends ``privacy.delta``; Laplace is pure DP."""
    return functional_noise(settings.privacy_functional_noise).spends_delta


def _release(settings: Any) -> str:
    """``objective`` when the server sums the released objectives, else trained ``weights``."""
    return "objective" if settings.privacy_functional_aggregation == "objective" else "weights"


FUNCTIONAL = register_mode(
    PrivacyMode(
        name="functional",
        summary="the functional mechanism: one epsilon-DP noisy objective per client dataset",
        private=True,
        spends_delta=_spends_delta,
        trainer="tasks.training.functional:train_functional",
        model_capability="objective",
        release=_release,
    )
)
"""Zhang et al. 2012, Algorithm 1, models with an exact objective: pure epsilon-DP (no delta)
with ``privacy.functional_noise=laplace``, ``(epsilon, delta)`` with ``gaussian``."""
