"""Weighted FedAvg with pluggable weights (example counts, or a reliability scorer).

:class:`WeightedFedAvg` aggregates in update space, ``g_new = g + sum_i a_i u_i``, with the
weights ``a_i`` and updates ``u_i`` from a pluggable :data:`Weighting` (example counts by
default, as FedAvg; a :class:`reliability.ReliabilityWeighting` scorer plugs in unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import FedAvg

from protocol import keys
from protocol.records import to_record
from reliability import RoundInput

from .mixin import FedPrivMixin
from .replies import (
    ClientOutcome,
    RoundLog,
    Weights,
)

Weighting = Callable[[RoundInput], tuple[np.ndarray, tuple[Weights, ...], dict[str, np.ndarray]]]
"""``RoundInput -> (weights summing to 1 or all 0, updates to aggregate, per-client details)``."""


def weight_by_examples(r: RoundInput) -> tuple[np.ndarray, tuple[Weights, ...], dict]:
    """FedAvg's weights: each client's share of the training examples."""
    n = np.asarray(r.num_examples, dtype=np.float64)
    return (n / n.sum() if n.sum() > 0 else n), r.updates, {}


class WeightedFedAvg(FedPrivMixin, FedAvg):
    """FedAvg in update space with weights from a pluggable :data:`Weighting`."""

    def __init__(
        self,
        *,
        fraction_train: float,
        fraction_evaluate: float,
        min_available_nodes: int,
        seed: int,
        weighting: Weighting = weight_by_examples,
        server_update: Callable[[int, Weights], Weights | None] | None = None,
        node_wait_timeout: float = 600.0,
        min_replies: int = 1,
        **_: Any,
    ) -> None:
        FedAvg.__init__(
            self,
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
            min_available_nodes=min_available_nodes,
            weighted_by_key=keys.NUM_EXAMPLES,
            arrayrecord_key=keys.ARRAYS,
            configrecord_key=keys.CONFIG,
        )
        self.setup_fedpriv(seed, node_wait_timeout, min_replies)
        self.weighting = weighting
        self.server_update = server_update

    def aggregate_usable(
        self,
        server_round: int,
        usable: list[tuple[ClientOutcome, Weights, Message]],
        reference: Weights,
    ) -> ArrayRecord | None:
        """``g + sum_i a_i u_i`` with ``(a, u)`` from the weighting; None if every a_i is 0."""
        outcomes = [o for o, _, _ in usable]
        deltas = tuple({k: w[k] - reference[k] for k in reference} for _, w, _ in usable)
        server_delta = self.server_update(server_round, reference) if self.server_update else None
        r = RoundInput(
            round=server_round,
            client_ids=tuple(o.partition_id for o in outcomes),
            updates=deltas,
            num_examples=tuple(o.num_examples for o in outcomes),
            server_update=server_delta,
        )
        weights, updates, details = self.weighting(r)
        weights = np.asarray(weights, dtype=np.float64)
        if (
            weights.shape != (len(outcomes),)
            or not np.all(np.isfinite(weights))
            or np.any(weights < 0)
        ):
            raise ValueError(f"weighting returned invalid weights {weights.tolist()}")
        for i, o in enumerate(outcomes):
            o.weight = float(weights[i])
            o.score = float(details["score"][i]) if "score" in details else math.nan
            o.reputation = float(details["reputation"][i]) if "reputation" in details else math.nan
        if weights.sum() <= 0:
            self.rounds.setdefault(
                server_round, RoundLog()
            ).kept_reason = "every aggregation weight was 0"
            return None
        return to_record(
            {
                k: (
                    ref + np.sum([a * u[k] for a, u in zip(weights, updates, strict=True)], axis=0)
                ).astype(ref.dtype, copy=False)
                for k, ref in reference.items()
            }
        )
