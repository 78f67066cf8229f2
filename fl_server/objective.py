"""Objective aggregation of the functional mechanism (``functional_aggregation=objective``).

Each functional-mechanism client releases its noisy objectives once (Zhang et al., PVLDB
2012, Algorithm 1) and sends them every round under ``protocol.keys.FM_OBJECTIVES`` beside
its weights. :class:`ObjectiveFedAvg` validates both, lets the weighting (example counts, or a
reliability scorer) weigh the clients as :class:`WeightedFedAvg` does, then replaces the
trained head by the minimiser of the weighted sum of the released objectives
(the model's head kind, :data:`privacy.functional.HEAD_KINDS`: per-row objectives or one
softmax release). The math, and why this is post-processing of the clients' epsilon-DP
releases, is in :mod:`privacy.functional.aggregate` and :mod:`privacy.functional.softmax`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from privacy.functional import HeadKind, head_kind
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from reliability import validate_update
from tasks.models import model_info
from tasks.models.functional import FUNCTIONAL_HEAD

from .replies import ClientOutcome, Weights
from .weighted import WeightedFedAvg

NoiseScale = Callable[[int, int], float]
"""``(dim, outputs) -> b``: the per-coefficient noise scale every client used, in Laplace units
(``std / sqrt 2``: the Laplace scale, or ``sigma / sqrt 2`` for Gaussian noise); public."""


def noise_scale_of(settings: RunSettings) -> NoiseScale:
    """The noise scale every functional client of this run used: public, from the settings.

    The same mechanism the clients drew with (the model's objective kind,
    :meth:`privacy.functional.HeadKind.noise_scale`, at ``privacy.functional_bound``,
    ``privacy.functional_noise`` (with ``privacy.delta``) and the training epsilon), so the
    ridge of the summed releases follows the noise's standard deviation either way.
    """
    kind = model_head_kind(settings)
    kind.check_noise(settings.privacy_functional_noise)  # at start-up, not at the first reply

    def scale(dim: int, outputs: int) -> float:
        return kind.noise_scale(
            settings.training_epsilon,
            settings.privacy_functional_bound,
            dim,
            outputs,
            noise=settings.privacy_functional_noise,
            delta=settings.privacy_delta,
        )

    return scale


def model_head_kind(settings: RunSettings) -> HeadKind:
    """The head kind of the run's model; ``ValueError`` when it has no exact objective."""
    kind = model_info(settings.model_name).objective
    if not kind:
        raise ValueError(
            f"model.name={settings.model_name!r} has no exact objective, so its clients cannot "
            "release one (privacy.functional_aggregation=objective needs a functional model)"
        )
    return head_kind(kind)


def parse_release(
    msg: Message, kind: HeadKind, outputs: int, dim: int
) -> tuple[dict[str, np.ndarray], str]:
    """A reply's released arrays, or ``({}, reason)`` when they are missing or malformed.

    The arrays go through :func:`reliability.validate_update` against the kind's expected
    shapes (NaN/Inf, shape, dtype kind, missing or unexpected arrays), then through the
    kind's own checks (:meth:`privacy.functional.HeadKind.check`: a symmetric ``M`` or Gram).
    """
    record = msg.content.array_records.get(keys.FM_OBJECTIVES)
    if record is None:
        return {}, (
            f"reply has no '{keys.FM_OBJECTIVES}' record "
            "(privacy.functional_aggregation=objective needs the released objectives)"
        )
    arrays = from_record(record)
    reference = {k: np.zeros(shape) for k, shape in kind.shapes(outputs, dim).items()}
    problem = validate_update(arrays, reference)
    if problem:
        return {}, f"objective release: {problem}"
    try:
        kind.check(arrays)
    except ValueError as err:
        return {}, f"objective release: {err}"
    return arrays, ""


class ObjectiveFedAvg(WeightedFedAvg):
    """:class:`WeightedFedAvg` whose head is the minimiser of the summed released objectives.

    A client with weight ``a_i`` (from the weighting, summing to 1) contributes
    ``a_i * N / n_i`` times its objective (``N`` the usable clients' examples): 1 for every
    client under FedAvg's example weights, i.e. the plain sum, which is the objective of the
    union of the clients' data; a reliability scorer's down-weighting carries over, and the
    scorer reads each client's head against the zero head (the expansion point), so the same
    release gets the same score every round. The other weights (public, fixed layers) are
    averaged as usual.
    """

    def __init__(self, *, noise_scale: NoiseScale, kind: HeadKind, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise_scale = noise_scale
        self.kind = kind

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
        releases: list[dict[str, np.ndarray]] = []
        for outcome, weights, msg in usable:
            arrays, problem = parse_release(msg, self.kind, outputs, dim)
            if problem:
                outcome.status, outcome.reason = "rejected", problem
                continue
            kept.append((outcome, weights, msg))
            releases.append(arrays)
        if len(kept) < max(1, self.min_replies):
            return None
        # The weighting (a reliability scorer) sees each client's head from the expansion point
        # (the zero head), not from this round's global head: under closed-form solving a
        # client's head is a function of its release alone, the same every round, so the
        # scores accumulate evidence about the releases instead of re-judging small moves
        # around the server's solution. The head of the weighted average is replaced below.
        anchored = {**reference, FUNCTIONAL_HEAD: np.zeros_like(head)}
        averaged = super().aggregate_usable(server_round, kept, anchored)
        if averaged is None:
            return None
        a = np.array([o.weight for o, _, _ in kept], dtype=np.float64)
        n = np.array([o.num_examples for o, _, _ in kept], dtype=np.float64)
        scale = a * n.sum() / n
        b = self.noise_scale(dim, outputs)
        result = from_record(averaged)
        solved = self.kind.solve(releases, b, scale)
        result[FUNCTIONAL_HEAD] = solved.astype(head.dtype, copy=False)
        return to_record(result)
