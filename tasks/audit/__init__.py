"""Privacy auditing in simulation: canaries with secret coins, attacks, an in-process federation.

:mod:`.canaries` builds the canaries and the client data they hide in, :mod:`.attacks` scores
them from what an attacker sees (:mod:`.objective`: the seed-knowing auditor of the functional
mechanism's released objectives; :mod:`.gradient`: Dirac gradient canaries in the audited
client's DP-SGD and the server's attack on them), :mod:`.simulate` runs the federation whose
releases are attacked. The bound itself is :mod:`privacy.audit`; the entry point
``experiments.audit``.
"""

from tasks.audit.attacks import ATTACKS, gradient_scores, loss_scores
from tasks.audit.canaries import (
    CANARY_KINDS,
    Canaries,
    DiracCanaries,
    draw_coins,
    insert_canaries,
    make_canaries,
    make_gradient_canaries,
)
from tasks.audit.gradient import dirac_dpsgd, whitebox_gradient
from tasks.audit.objective import EXACT_STATISTICS, canary_directions, objective_scores
from tasks.audit.simulate import (
    AuditFederation,
    Releases,
    Reply,
    fedavg,
    objective_sum,
    replay_round,
    run_federation,
)

__all__ = [
    "ATTACKS",
    "CANARY_KINDS",
    "EXACT_STATISTICS",
    "AuditFederation",
    "Canaries",
    "DiracCanaries",
    "Releases",
    "Reply",
    "canary_directions",
    "dirac_dpsgd",
    "draw_coins",
    "fedavg",
    "gradient_scores",
    "insert_canaries",
    "loss_scores",
    "make_canaries",
    "make_gradient_canaries",
    "objective_scores",
    "objective_sum",
    "replay_round",
    "run_federation",
    "whitebox_gradient",
]
