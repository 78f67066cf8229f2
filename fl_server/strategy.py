"""FedAvg with per-client weights, failure accounting and seeded sampling.

:class:`WeightedFedAvg` keeps Flower's ``FedAvg`` round structure (it runs through
``Strategy.start``) and changes three things:

* the nodes of each round are sampled with a generator seeded from the run's ``seed``;
* replies are sorted into trained, declined (privacy budget) and failed (the ClientApp raised),
  and every client's outcome is kept per round for the results;
* the aggregate is weighted by ``weighting(outcomes, updates)``, a pluggable function (the
  default weighs by example count, as FedAvg does), so a reliability scorer plugs in without
  touching the strategy.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from protocol import keys
from protocol.records import from_record, to_record


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
    train_seconds: float = float("nan")
    weight: float = 0.0
    reason: str = ""


Weighting = Callable[[list[ClientOutcome], list[dict[str, np.ndarray]]], list[float]]


def weight_by_examples(
    outcomes: list[ClientOutcome], _: list[dict[str, np.ndarray]]
) -> list[float]:
    """FedAvg's weights: each client's number of training examples."""
    return [float(o.num_examples) for o in outcomes]


@dataclass
class RoundLog:
    """What the strategy saw in one round (read by the ServerApp's per-round hook)."""

    started: float = field(default_factory=time.perf_counter)
    outcomes: list[ClientOutcome] = field(default_factory=list)
    kept_previous_model: bool = False
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")


def _number(record: MetricRecord, key: str, default: float) -> float:
    """A scalar entry of a MetricRecord (lists are not expected here)."""
    value = record.get(key, default)
    if isinstance(value, list):
        raise ValueError(f"metric {key!r} must be a scalar, got a list")
    return float(value)


class NoClientSucceededError(RuntimeError):
    """Raised when every sampled client of a round failed."""


class WeightedFedAvg(FedAvg):
    """FedAvg whose aggregation weights come from a pluggable ``weighting`` function."""

    def __init__(
        self,
        *,
        fraction_train: float,
        fraction_evaluate: float,
        min_available_nodes: int,
        seed: int,
        weighting: Weighting = weight_by_examples,
        node_wait_timeout: float = 600.0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
            min_available_nodes=min_available_nodes,
            weighted_by_key=keys.NUM_EXAMPLES,
            arrayrecord_key=keys.ARRAYS,
            configrecord_key=keys.CONFIG,
        )
        self.weighting = weighting
        self.node_wait_timeout = node_wait_timeout
        self._rng = random.Random(seed)
        self.rounds: dict[int, RoundLog] = {}

    # ------------------------------------------------------------------ sampling
    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait_timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} of federation.num_clients={self.min_available_nodes} "
                    f"nodes connected within {self.node_wait_timeout:g} s"
                )
            time.sleep(0.5)
        size = min(len(nodes), max(minimum, int(len(nodes) * fraction)))
        return sorted(self._rng.sample(nodes, size))

    def _messages(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        kind: str,
    ) -> list[Message]:
        config[keys.SERVER_ROUND] = server_round
        record = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        return [Message(content=record, message_type=kind, dst_node_id=n) for n in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample this round's clients (seeded) and send them the global model."""
        self.rounds[server_round] = RoundLog()
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        return self._messages(server_round, arrays, config, nodes, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients for federated evaluation on their validation splits."""
        if self.fraction_evaluate == 0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE)

    # ------------------------------------------------------------------ aggregation
    @staticmethod
    def _outcome(server_round: int, msg: Message) -> tuple[ClientOutcome, dict | None]:
        out = ClientOutcome(server_round, int(msg.metadata.src_node_id))
        if msg.has_error():
            out.reason = f"client error: {msg.error.reason}"
            return out, None
        content = msg.content
        metrics = content.metric_records.get(keys.METRICS)
        if metrics is None:
            out.reason = f"reply has no '{keys.METRICS}' record"
            return out, None
        out.partition_id = int(_number(metrics, keys.PARTITION_ID, -1))
        out.num_examples = int(_number(metrics, keys.NUM_EXAMPLES, 0))
        out.epsilon = _number(metrics, keys.EPSILON, float("nan"))
        out.train_loss = _number(metrics, keys.TRAIN_LOSS, float("nan"))
        out.train_seconds = _number(metrics, keys.TRAIN_SECONDS, float("nan"))
        status = content.config_records.get(keys.STATUS)
        out.reason = str(status.get(keys.REASON, "")) if status is not None else ""
        if int(_number(metrics, keys.DECLINED, 0)):
            out.status = "declined"
            return out, None
        if keys.ARRAYS not in content.array_records:
            out.reason = f"reply has no '{keys.ARRAYS}' record"
            return out, None
        out.status = "trained"
        return out, from_record(content.array_records[keys.ARRAYS])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted average of the trained clients' weights; None keeps the previous model."""
        log = self.rounds.setdefault(server_round, RoundLog())
        trained: list[ClientOutcome] = []
        updates: list[dict[str, np.ndarray]] = []
        for msg in replies:
            outcome, weights = self._outcome(server_round, msg)
            log.outcomes.append(outcome)
            if weights is not None:
                trained.append(outcome)
                updates.append(weights)
        failed = [o for o in log.outcomes if o.status == "failed"]
        if not trained and failed and len(failed) == len(log.outcomes):
            reasons = "; ".join(sorted({o.reason for o in failed}))
            raise NoClientSucceededError(
                f"round {server_round}: no client succeeded ({len(failed)} failed): {reasons}"
            )
        arrays = None
        if trained:
            raw = np.asarray(self.weighting(trained, updates), dtype=np.float64)
            if raw.shape != (len(trained),) or not np.all(np.isfinite(raw)) or np.any(raw < 0):
                raise ValueError(f"weighting returned invalid weights {raw.tolist()}")
            if raw.sum() > 0:
                share = raw / raw.sum()
                for outcome, w in zip(trained, share, strict=True):
                    outcome.weight = float(w)
                arrays = to_record(
                    {
                        k: np.sum(
                            [w * u[k] for w, u in zip(share, updates, strict=True)], axis=0
                        ).astype(ref.dtype, copy=False)
                        for k, ref in updates[0].items()
                    }
                )
        log.kept_previous_model = arrays is None
        return arrays, self._train_metrics(log)

    @staticmethod
    def _train_metrics(log: RoundLog) -> MetricRecord:
        trained = [o for o in log.outcomes if o.status == "trained"]
        eps = [o.epsilon for o in log.outcomes if not math.isnan(o.epsilon)]
        loss = sum(o.weight * o.train_loss for o in trained) if trained else float("nan")
        return MetricRecord(
            {
                "train-loss": float(loss),
                "trained": len(trained),
                "declined": sum(o.status == "declined" for o in log.outcomes),
                "failed": sum(o.status == "failed" for o in log.outcomes),
                "epsilon-max": max(eps) if eps else float("nan"),
                "epsilon-mean": float(np.mean(eps)) if eps else float("nan"),
            }
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted validation loss and accuracy over the clients that answered."""
        total, loss, acc = 0, 0.0, 0.0
        for msg in replies:
            if msg.has_error() or keys.METRICS not in msg.content.metric_records:
                continue
            m = msg.content.metric_records[keys.METRICS]
            n = int(_number(m, keys.NUM_EXAMPLES, 0))
            if n == 0:
                continue
            total += n
            loss += n * _number(m, keys.VAL_LOSS, 0.0)
            acc += n * _number(m, keys.VAL_ACCURACY, 0.0)
        if total == 0:
            return None
        log = self.rounds.setdefault(server_round, RoundLog())
        log.val_loss, log.val_accuracy = loss / total, acc / total
        return MetricRecord({"val-loss": log.val_loss, "val-accuracy": log.val_accuracy})
