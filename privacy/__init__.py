"""Differential-privacy mathematics and data: RNGs, DP-SGD planning, privacy ledger.

Framework-free: depends only on numpy, torch, opacus and the standard library.
"""

from privacy.dpsgd import (
    DpSgdPlan,
    PrivateTraining,
    make_private,
    plan_dpsgd,
    planned_round_event,
    would_exceed,
)
from privacy.ledger import Event, PrivacyLedger, PureDpEvent, SampledGaussianEvent
from privacy.rng import derive_seed, make_generator

__all__ = [
    "DpSgdPlan",
    "Event",
    "PrivacyLedger",
    "PrivateTraining",
    "PureDpEvent",
    "SampledGaussianEvent",
    "derive_seed",
    "make_generator",
    "make_private",
    "plan_dpsgd",
    "planned_round_event",
    "would_exceed",
]
