"""Objective aggregation of the functional mechanism (``functional_aggregation=objective``).

Each functional-mechanism client releases its noisy objectives once (Zhang et al., PVLDB
2012, Algorithm 1) and sends them every round under ``protocol.keys.FM_OBJECTIVES`` beside
its weights. :class:`ObjectiveFedAvg` validates both, lets the weighting (example counts, or a
reliability scorer) weigh the clients as :class:`WeightedFedAvg` does, then replaces the
trained head by the minimiser of the weighted sum of the released objectives
(:func:`privacy.functional.solve_summed`). The math, and why this is post-processing of the
clients' epsilon-DP releases, is in :mod:`privacy.functional.aggregate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from privacy.functional import (
    QuadraticObjective,
    head_mechanism,
    objectives_from_arrays,
    release_shapes,
    solve_summed,
)
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from reliability import validate_update
from tasks.models import model_info
from tasks.models.functional import FUNCTIONAL_HEAD

from .replies import ClientOutcome, Weights
from .weighted import WeightedFedAvg

NoiseScale = Callable[[int, int], float]
"""``(dim, outputs) -> b``: the Laplace scale every client used (public, from the settings)."""


def noise_scale_of(settings: RunSettings) -> NoiseScale:
    """The Laplace scale every functional client of this run used: public, from the settings.

    The same mechanism the clients drew with (:func:`privacy.functional.head_mechanism` of
    the model's objective kind, ``privacy.functional_bound`` and the training epsilon).
    """
    kind = model_info(settings.model_name).objective
    if not kind:
        raise ValueError(
            f"model.name={settings.model_name!r} has no exact objective, so its clients cannot "
            "release one (privacy.functional_aggregation=objective needs a functional model)"
        )

    def scale(dim: int, outputs: int) -> float:
        return head_mechanism(
            settings.training_epsilon, kind, settings.privacy_functional_bound, outputs
        ).noise_scale(dim)

    return scale


def parse_release(msg: Message, outputs: int, dim: int) -> tuple[list[QuadraticObjective], str]:
    """A reply's released objectives, or ``([], reason)`` when they are missing or malformed.

    The arrays go through :func:`reliability.validate_update` against the expected shapes
    (NaN/Inf, shape, dtype kind, missing or unexpected arrays), then through
    :class:`privacy.functional.QuadraticObjective`'s own checks (symmetric ``M``).
    """
    record = msg.content.array_records.get(keys.FM_OBJECTIVES)
    if record is None:
        return [], (
            f"reply has no '{keys.FM_OBJECTIVES}' record "
            "(privacy.functional_aggregation=objective needs the released objectives)"
        )
    arrays = from_record(record)
    reference = {k: np.zeros(shape) for k, shape in release_shapes(outputs, dim).items()}
    problem = validate_update(arrays, reference)
    if problem:
        return [], f"objective release: {problem}"
    try:
        return objectives_from_arrays(arrays), ""
    except ValueError as err:
        return [], f"objective release: {err}"


class ObjectiveFedAvg(WeightedFedAvg):
    """:class:`WeightedFedAvg` whose head is the minimiser of the summed released objectives.

    A client with weight ``a_i`` (from the weighting, summing to 1) contributes
    ``a_i * N / n_i`` times its objective (``N`` the usable clients' examples): 1 for every
    client under FedAvg's example weights, i.e. the plain sum, which is the objective of the
    union of the clients' data; a reliability scorer's down-weighting carries over. The other
    weights (public, fixed layers) are averaged as usual.
    """

    def __init__(self, *, noise_scale: NoiseScale, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise_scale = noise_scale

    def aggregate_usable(
        self,
        server_round: int,
        usable: list[tuple[ClientOutcome, Weights, Message]],
        reference: Weights,
    ) -> ArrayRecord | None:
        """Reject replies without a valid release, weigh the rest, solve the sum once."""
        if FUNCTIONAL_HEAD not in reference:
            raise ValueError(
                f"privacy.functional_aggregation='objective' needs a functional model with "
                f"'{FUNCTIONAL_HEAD}', got weights {sorted(reference)}"
            )
        head = reference[FUNCTIONAL_HEAD]
        outputs, dim = head.shape
        kept: list[tuple[ClientOutcome, Weights, Message]] = []
        releases: list[list[QuadraticObjective]] = []
        for outcome, weights, msg in usable:
            objectives, problem = parse_release(msg, outputs, dim)
            if problem:
                outcome.status, outcome.reason = "rejected", problem
                continue
            kept.append((outcome, weights, msg))
            releases.append(objectives)
        if len(kept) < max(1, self.min_replies):
            return None
        averaged = super().aggregate_usable(server_round, kept, reference)
        if averaged is None:
            return None
        a = np.array([o.weight for o, _, _ in kept], dtype=np.float64)
        n = np.array([o.num_examples for o, _, _ in kept], dtype=np.float64)
        scale = a * n.sum() / n
        b = self.noise_scale(dim, outputs)
        rows = [solve_summed([r[k] for r in releases], b, scale) for k in range(outputs)]
        result = from_record(averaged)
        result[FUNCTIONAL_HEAD] = np.stack(rows).astype(head.dtype, copy=False)
        return to_record(result)
