"""Differential-privacy mathematics and data: RNGs, DP-SGD, ledger, functional mechanism.

Framework-free: depends only on numpy, torch, opacus and the standard library. The privacy
modes register themselves on import (:mod:`privacy.modes`: ``none``; :mod:`privacy.dpsgd`;
:mod:`privacy.functional`), here.
"""

from privacy.dpsgd import (
    DpSgdPlan,
    PrivateTraining,
    make_private,
    plan_dpsgd,
    planned_round_event,
    would_exceed,
)
from privacy.functional import (
    SENSITIVITY_BOUNDS,
    FeatureBounds,
    FunctionalMechanism,
    PublicFeatureNetwork,
    QuadraticObjective,
    TargetBounds,
    default_ridge,
    gradient_steps,
    make_noise_generator,
    minimise,
    stabilise,
)
from privacy.ledger import Event, PrivacyLedger, PureDpEvent, SampledGaussianEvent
from privacy.modes import MODES, PrivacyMode, get_mode, is_private, register_mode
from privacy.rng import derive_seed, make_generator

__all__ = [
    "MODES",
    "PrivacyMode",
    "get_mode",
    "is_private",
    "register_mode",
    "SENSITIVITY_BOUNDS",
    "DpSgdPlan",
    "Event",
    "FeatureBounds",
    "FunctionalMechanism",
    "PrivacyLedger",
    "PrivateTraining",
    "PublicFeatureNetwork",
    "PureDpEvent",
    "QuadraticObjective",
    "SampledGaussianEvent",
    "TargetBounds",
    "default_ridge",
    "derive_seed",
    "gradient_steps",
    "make_generator",
    "make_noise_generator",
    "make_private",
    "minimise",
    "plan_dpsgd",
    "planned_round_event",
    "stabilise",
    "would_exceed",
]
