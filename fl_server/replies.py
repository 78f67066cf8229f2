"""What the server makes of each reply: its outcome, the round's log, the round's summary.

:func:`parse_reply` sorts a reply into trained, declined (privacy budget), rejected (malformed:
NaN/Inf, wrong shape or dtype, missing keys; see :mod:`reliability.validation`) and failed (an
error reply); :class:`RoundLog` keeps every client's :class:`ClientOutcome` of a round for the
results tables, and :func:`train_metrics` summarises it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, MetricRecord

from protocol import keys
from protocol.records import from_record
from reliability import NumberRule, parse_numbers, validate_count, validate_update

MAX_EXAMPLES = 2**40
"""No client holds more records than this; larger claims are rejected outright (the round's
median then caps what is left, see :data:`COUNT_CAP_FACTOR`)."""
MAX_PARTITION_ID = 2**31 - 1
MAX_REASON = 500
"""A reply's reason text is kept to this many characters in the results tables."""

TRAIN_RULES: dict[str, NumberRule] = {
    keys.NUM_EXAMPLES: NumberRule(integer=True, low=0, high=MAX_EXAMPLES),
    keys.PARTITION_ID: NumberRule(integer=True, low=0, high=MAX_PARTITION_ID),
    keys.EPSILON: NumberRule(low=0, allow_inf=True),
    keys.DELTA: NumberRule(low=0, high=1, required=False),
    keys.DECLINED: NumberRule(integer=True, low=0, high=1, required=False),
    keys.TRAIN_SECONDS: NumberRule(low=0, allow_nan=True, required=False),
    keys.TRAIN_LOSS: NumberRule(allow_nan=True, required=False),
    keys.TRAIN_LOSS_DP: NumberRule(allow_nan=True, required=False),
}
"""Every number a train reply may carry, and what it must be: one parser for all of them
(:func:`reliability.parse_numbers`), so a hostile value is a rejection with its reason, never
an exception."""

EVALUATE_RULES: dict[str, NumberRule] = {
    keys.NUM_EXAMPLES: NumberRule(integer=True, low=0, high=MAX_EXAMPLES),
    keys.PARTITION_ID: NumberRule(integer=True, low=0, high=MAX_PARTITION_ID, required=False),
    keys.EPSILON: NumberRule(low=0, allow_inf=True, required=False),
    keys.DECLINED: NumberRule(integer=True, low=0, high=1, required=False),
    keys.VAL_LOSS: NumberRule(allow_nan=True, required=False),
    keys.VAL_ACCURACY: NumberRule(low=0, high=1, allow_nan=True, required=False),
    keys.VAL_ACCURACY_DP: NumberRule(low=0, high=1, required=False),
    keys.VAL_LOSS_DP: NumberRule(low=0, required=False),
}
"""Every number an evaluate reply may carry."""

COUNT_CAP_FACTOR = 10.0
"""A trained reply's example count is capped at this many times the median count of the round's
other usable replies (:func:`reliability.cap_counts`): honest partitions up to 10x the median
keep their full FedAvg weight, and a client claiming 10^12 examples weighs as if it held 10x
the median."""
NORM_OUTLIER_FACTOR = 10.0
"""A trained update whose L2 norm exceeds this many times the median norm of the round's other
usable updates (with 3 or more) is rejected (:func:`reliability.norm_outliers`)."""

Weights = dict[str, np.ndarray]


@dataclass
class ClientOutcome:
    """One client's reply in one round, as the results tables show it."""

    round: int
    node_id: int
    partition_id: int = -1
    status: str = "failed"
    num_examples: int = 0
    epsilon: float = float("nan")
    train_loss: float = float("nan")
    train_loss_dp: float = float("nan")
    train_seconds: float = float("nan")
    weight: float = float("nan")
    score: float = float("nan")
    reputation: float = float("nan")
    reason: str = ""


@dataclass
class RoundLog:
    """What the strategy saw in one round (read by the ServerApp's per-round hook)."""

    started: float = field(default_factory=time.perf_counter)
    outcomes: list[ClientOutcome] = field(default_factory=list)
    kept_previous_model: bool = False
    kept_reason: str = ""
    sampled: list[int] = field(default_factory=list)
    connected: set[int] = field(default_factory=set)
    sent: list[Message] = field(default_factory=list, repr=False)
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    val_accuracy_dp: float = float("nan")
    val_loss_dp: float = float("nan")
    central: dict[str, float] = field(default_factory=dict)
    """Client-level DP only (``central_dp``): extra columns of the round's row."""


class NoClientSucceededError(RuntimeError):
    """Raised when every sampled client of a round failed."""


def parse_reply(
    server_round: int, msg: Message, reference: Weights
) -> tuple[ClientOutcome, Weights | None]:
    """A reply's outcome, and its weights when it trained and passed validation."""
    out = ClientOutcome(server_round, int(msg.metadata.src_node_id))
    if msg.has_error():
        out.reason = f"client error: {msg.error.reason}"
        return out, None
    content = msg.content
    metrics = content.metric_records.get(keys.METRICS)
    if metrics is None:
        out.status, out.reason = "rejected", f"reply has no '{keys.METRICS}' record"
        return out, None
    values, problem = parse_numbers(metrics, TRAIN_RULES)
    if problem:
        out.status, out.reason = "rejected", f"malformed metrics: {problem}"
        return out, None
    out.partition_id = int(values[keys.PARTITION_ID])
    out.num_examples = int(values[keys.NUM_EXAMPLES])
    out.epsilon = values[keys.EPSILON]
    out.train_loss = values[keys.TRAIN_LOSS]
    out.train_loss_dp = values[keys.TRAIN_LOSS_DP]
    out.train_seconds = values[keys.TRAIN_SECONDS]
    declined = values[keys.DECLINED] == 1
    status = content.config_records.get(keys.STATUS)
    out.reason = str(status.get(keys.REASON, ""))[:MAX_REASON] if status is not None else ""
    if declined:
        out.status = "declined"
        return out, None
    if keys.ARRAYS not in content.array_records:
        out.status, out.reason = "rejected", f"reply has no '{keys.ARRAYS}' record"
        return out, None
    try:
        weights = from_record(content.array_records[keys.ARRAYS])
    except Exception as err:  # a hostile record must not end the round
        out.status, out.reason = (
            "rejected",
            f"unreadable '{keys.ARRAYS}' record ({type(err).__name__})",
        )
        return out, None
    bad = validate_count(out.num_examples) or validate_update(weights, reference)
    if bad:
        out.status, out.reason = "rejected", bad
        return out, None
    out.status = "trained"
    return out, weights


def train_metrics(log: RoundLog) -> MetricRecord:
    """A round's summary as a MetricRecord (Flower keeps it in its Result)."""
    trained = [o for o in log.outcomes if o.status == "trained"]
    eps = [o.epsilon for o in log.outcomes if not math.isnan(o.epsilon)]
    losses = [o.train_loss for o in trained if math.isfinite(o.train_loss)]
    return MetricRecord(
        {
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "trained": len(trained),
            "declined": sum(o.status == "declined" for o in log.outcomes),
            "rejected": sum(o.status == "rejected" for o in log.outcomes),
            "failed": sum(o.status == "failed" for o in log.outcomes),
            "epsilon-max": max(eps) if eps else float("nan"),
            "epsilon-mean": float(np.mean(eps)) if eps else float("nan"),
        }
    )
