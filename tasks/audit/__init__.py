"""Privacy auditing in simulation: canaries with secret coins, attacks, an in-process federation.

:mod:`.canaries` builds the canaries and the client data they hide in, :mod:`.attacks` scores
them from what an attacker sees, :mod:`.simulate` runs the federation whose releases are
attacked. The bound itself is :mod:`privacy.audit`; the entry point ``experiments.audit``.
"""

from tasks.audit.attacks import ATTACKS, gradient_scores, loss_scores
from tasks.audit.canaries import Canaries, draw_coins, insert_canaries, make_canaries
from tasks.audit.simulate import AuditFederation, Releases, replay_round, run_federation

__all__ = [
    "ATTACKS",
    "AuditFederation",
    "Canaries",
    "Releases",
    "draw_coins",
    "gradient_scores",
    "insert_canaries",
    "loss_scores",
    "make_canaries",
    "replay_round",
    "run_federation",
]
