"""An independent epsilon for a DP-SGD history: dp_accounting's PLD built here, not by fedpriv.

Replace-one neighbours, a finer discretisation than ``privacy.accounting`` uses (1e-4 against
1e-3), and every round composed as its own event (no merging), so it checks the merging, the
relation and the discretisation of the code under test.
"""

from __future__ import annotations

import dp_accounting as dpa
from dp_accounting.pld import pld_privacy_accountant


def reference_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(
        dpa.NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4
    )
    events = [
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(nm)), steps)
        for nm, q, steps in history
        if steps > 0
    ]
    if not events:
        return 0.0
    acc.compose(dpa.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))
