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
from reliability import validate_count, validate_update

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
    sent: list[Message] = field(default_factory=list, repr=False)
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    val_accuracy_dp: float = float("nan")
    val_loss_dp: float = float("nan")


class NoClientSucceededError(RuntimeError):
    """Raised when every sampled client of a round failed."""


def metric_number(record: MetricRecord, key: str, default: float) -> float:
    """A scalar entry of a MetricRecord (lists are not expected here)."""
    value = record.get(key, default)
    if isinstance(value, list):
        raise ValueError(f"metric {key!r} must be a scalar, got a list")
    return float(value)


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
    try:
        out.partition_id = int(metric_number(metrics, keys.PARTITION_ID, -1))
        if out.partition_id < 0:
            raise ValueError(f"'{keys.PARTITION_ID}' must be an id >= 0, got {out.partition_id}")
        out.num_examples = int(metric_number(metrics, keys.NUM_EXAMPLES, 0))
        out.epsilon = metric_number(metrics, keys.EPSILON, float("nan"))
        out.train_loss = metric_number(metrics, keys.TRAIN_LOSS, float("nan"))
        out.train_loss_dp = metric_number(metrics, keys.TRAIN_LOSS_DP, float("nan"))
        out.train_seconds = metric_number(metrics, keys.TRAIN_SECONDS, float("nan"))
        declined = int(metric_number(metrics, keys.DECLINED, 0))
    except (TypeError, ValueError) as err:
        out.status, out.reason = "rejected", f"malformed metrics: {err}"
        return out, None
    status = content.config_records.get(keys.STATUS)
    out.reason = str(status.get(keys.REASON, "")) if status is not None else ""
    if declined:
        out.status = "declined"
        return out, None
    if keys.ARRAYS not in content.array_records:
        out.status, out.reason = "rejected", f"reply has no '{keys.ARRAYS}' record"
        return out, None
    weights = from_record(content.array_records[keys.ARRAYS])
    problem = validate_count(out.num_examples) or validate_update(weights, reference)
    if problem:
        out.status, out.reason = "rejected", problem
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
