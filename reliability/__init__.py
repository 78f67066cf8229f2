"""Participant reliability: scoring clients, turning scores into weights, validating replies.

Framework-free (numpy and the standard library only; never imports ``flwr``). Every scorer is
post-processing of what the clients already released under their own DP mechanism, plus the
server's own data, so scoring costs the clients no privacy.

Typical use in a server strategy::

    weighting = ReliabilityWeighting(make_scorer("median_agreement"), decay=0.5)
    weights, updates, details = weighting(RoundInput(rnd, ids, updates, counts))
    if weights.sum() > 0:
        new = {k: g[k] + sum(a * u[k] for a, u in zip(weights, updates)) for k in g}
"""

from reliability.scorers import (
    SCORERS,
    FLTrustScorer,
    MedianAgreementScorer,
    OutputAgreementScorer,
    Scorer,
    UniformScorer,
    make_scorer,
    register_scorer,
)
from reliability.types import RoundInput, Scores, Weights
from reliability.validation import (
    NumberRule,
    cap_counts,
    norm_outliers,
    parse_number,
    parse_numbers,
    update_norm,
    validate_count,
    validate_update,
)
from reliability.weighting import ReliabilityWeighting, Reputation, aggregation_weights

__all__ = [
    "SCORERS",
    "FLTrustScorer",
    "NumberRule",
    "MedianAgreementScorer",
    "OutputAgreementScorer",
    "ReliabilityWeighting",
    "Reputation",
    "RoundInput",
    "Scorer",
    "Scores",
    "UniformScorer",
    "Weights",
    "aggregation_weights",
    "cap_counts",
    "make_scorer",
    "norm_outliers",
    "parse_number",
    "parse_numbers",
    "register_scorer",
    "update_norm",
    "validate_count",
    "validate_update",
]
