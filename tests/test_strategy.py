"""WeightedFedAvg's aggregation over hand-built Flower reply messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_server.strategy import (
    ClientOutcome,
    NoClientSucceededError,
    RoundLog,
    WeightedFedAvg,
    weight_by_examples,
)
from protocol import keys
from protocol.records import from_record, to_record

SHAPE = (2, 3)
SERVER_NODE = 0  # the node id the ServerApp runtime gives itself (SUPERLINK_NODE_ID)


@pytest.fixture(autouse=True)
def _serverapp_identity():
    """Outside a running app Flower refuses to create messages; identify as the ServerApp does."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, SERVER_NODE
    try:
        yield
    finally:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = saved


def _strategy(**kwargs) -> WeightedFedAvg:
    return WeightedFedAvg(
        fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2, seed=0, **kwargs
    )


def _incoming(node: int, kind: str = MessageType.TRAIN) -> Message:
    arrays = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    return Message(
        content=RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}),
        dst_node_id=node,
        message_type=kind,
    )


def _trained(node: int, value: float, n: int, loss: float = 1.0, eps: float = 1.0) -> Message:
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: n,
            keys.PARTITION_ID: node % 100,
            keys.TRAIN_LOSS: loss,
            keys.EPSILON: eps,
            keys.DECLINED: 0,
            keys.TRAIN_SECONDS: 0.5,
        }
    )
    status = ConfigRecord({keys.STATE: keys.TRAINED, keys.REASON: ""})
    content = RecordDict(
        {
            keys.ARRAYS: to_record({"w": np.full(SHAPE, value, dtype=np.float32)}),
            keys.METRICS: metrics,
            keys.STATUS: status,
        }
    )
    return Message(content=content, reply_to=_incoming(node))


def _declined(node: int, reason: str = "declined: budget spent", eps: float = 3.9) -> Message:
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: 50,
            keys.PARTITION_ID: node % 100,
            keys.TRAIN_LOSS: float("nan"),
            keys.EPSILON: eps,
            keys.DECLINED: 1,
        }
    )
    status = ConfigRecord({keys.STATE: keys.DECLINED_BUDGET, keys.REASON: reason})
    content = RecordDict({keys.METRICS: metrics, keys.STATUS: status})
    return Message(content=content, reply_to=_incoming(node))


def _failed(node: int, reason: str = "boom") -> Message:
    return Message(Error(code=0, reason=reason), reply_to=_incoming(node))


def _eval_reply(node: int, n: int, loss: float, acc: float) -> Message:
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: n, keys.PARTITION_ID: node, keys.VAL_LOSS: loss, keys.VAL_ACCURACY: acc}
    )
    return Message(
        content=RecordDict({keys.METRICS: metrics}),
        reply_to=_incoming(node, MessageType.EVALUATE),
    )


# ---------------------------------------------------------------------- the messages themselves
def test_reply_comes_from_the_node_it_was_sent_to() -> None:
    reply = _trained(11, 1.0, 10)
    assert reply.metadata.src_node_id == 11
    assert reply.metadata.dst_node_id == SERVER_NODE
    assert reply.metadata.run_id == 42
    assert reply.metadata.message_type == MessageType.TRAIN
    assert _failed(12).has_error()


# ---------------------------------------------------------------------- aggregate_train
def test_example_weighted_mean() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(
        1, [_trained(11, 1.0, 100, loss=1.0, eps=1.0), _trained(12, 3.0, 300, loss=2.0, eps=2.0)]
    )
    assert arrays is not None
    w = from_record(arrays)["w"]
    assert w.shape == SHAPE
    np.testing.assert_allclose(w, 2.5)
    log = strategy.rounds[1]
    assert [o.node_id for o in log.outcomes] == [11, 12]
    assert [o.status for o in log.outcomes] == ["trained", "trained"]
    assert [o.weight for o in log.outcomes] == pytest.approx([0.25, 0.75])
    assert [o.num_examples for o in log.outcomes] == [100, 300]
    assert [o.partition_id for o in log.outcomes] == [11, 12]
    assert not log.kept_previous_model
    assert metrics is not None
    assert metrics["trained"] == 2
    assert metrics["declined"] == 0
    assert metrics["failed"] == 0
    assert metrics["train-loss"] == pytest.approx(0.25 * 1.0 + 0.75 * 2.0)
    assert metrics["epsilon-max"] == pytest.approx(2.0)
    assert metrics["epsilon-mean"] == pytest.approx(1.5)


def test_aggregate_keeps_dtype() -> None:
    arrays, _ = _strategy().aggregate_train(1, [_trained(1, 1.0, 1), _trained(2, 2.0, 3)])
    assert arrays is not None
    assert from_record(arrays)["w"].dtype == np.float32


def test_weight_by_examples() -> None:
    outcomes = [ClientOutcome(1, 1, num_examples=5), ClientOutcome(1, 2, num_examples=7)]
    assert weight_by_examples(outcomes, [{}, {}]) == [5.0, 7.0]


def test_custom_weighting_is_used() -> None:
    seen: list[tuple[list[int], int]] = []

    def first_only(outcomes: list[ClientOutcome], updates: list[dict]) -> list[float]:
        seen.append(([o.node_id for o in outcomes], len(updates)))
        return [1.0, 0.0]

    strategy = _strategy(weighting=first_only)
    arrays, _ = strategy.aggregate_train(1, [_trained(11, 1.0, 100), _trained(12, 3.0, 300)])
    assert seen == [([11, 12], 2)]
    assert arrays is not None
    np.testing.assert_allclose(from_record(arrays)["w"], 1.0)
    assert [o.weight for o in strategy.rounds[1].outcomes] == [1.0, 0.0]


def test_declined_and_failed_are_counted_and_left_out() -> None:
    strategy = _strategy()
    replies = [
        _trained(11, 3.0, 10),
        _declined(12, reason="declined: round 1 would take epsilon past 4"),
        _failed(13, reason="boom"),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(from_record(arrays)["w"], 3.0)
    assert metrics["trained"] == 1
    assert metrics["declined"] == 1
    assert metrics["failed"] == 1
    by_node = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert by_node[11].status == "trained" and by_node[11].weight == pytest.approx(1.0)
    assert by_node[12].status == "declined" and by_node[12].weight == 0.0
    assert by_node[12].reason == "declined: round 1 would take epsilon past 4"
    assert by_node[12].epsilon == pytest.approx(3.9)
    assert by_node[13].status == "failed" and by_node[13].weight == 0.0
    assert "boom" in by_node[13].reason
    assert by_node[13].reason.startswith("client error")
    assert not strategy.rounds[1].kept_previous_model


def test_reply_without_arrays_is_failed() -> None:
    strategy = _strategy()
    bad = _trained(12, 5.0, 10)
    del bad.content[keys.ARRAYS]
    arrays, metrics = strategy.aggregate_train(1, [_trained(11, 1.0, 10), bad])
    np.testing.assert_allclose(from_record(arrays)["w"], 1.0)
    assert metrics["failed"] == 1
    assert "arrays" in strategy.rounds[1].outcomes[1].reason


def test_reply_without_metrics_is_failed() -> None:
    strategy = _strategy()
    bad = _trained(12, 5.0, 10)
    del bad.content[keys.METRICS]
    arrays, metrics = strategy.aggregate_train(1, [_trained(11, 1.0, 10), bad])
    np.testing.assert_allclose(from_record(arrays)["w"], 1.0)
    assert metrics["failed"] == 1
    assert "metrics" in strategy.rounds[1].outcomes[1].reason


def test_all_failed_raises() -> None:
    strategy = _strategy()
    with pytest.raises(NoClientSucceededError, match="no client succeeded") as err:
        strategy.aggregate_train(3, [_failed(11, "boom"), _failed(12, "bang")])
    assert "round 3" in str(err.value)
    assert "boom" in str(err.value) and "bang" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_all_declined_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(2, [_declined(11), _declined(12)])
    assert arrays is None
    assert metrics["declined"] == 2
    assert metrics["trained"] == 0
    assert math.isnan(metrics["train-loss"])
    assert strategy.rounds[2].kept_previous_model is True


def test_declined_and_failed_without_trained_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [_declined(11), _failed(12)])
    assert arrays is None
    assert (metrics["declined"], metrics["failed"]) == (1, 1)
    assert strategy.rounds[1].kept_previous_model is True


@pytest.mark.parametrize(
    "bad", [[-1.0, 2.0], [float("nan"), 1.0], [float("inf"), 1.0], [1.0], [1.0, 1.0, 1.0]]
)
def test_invalid_weights_raise(bad: list[float]) -> None:
    strategy = _strategy(weighting=lambda outcomes, updates: bad)
    with pytest.raises(ValueError, match="invalid weights"):
        strategy.aggregate_train(1, [_trained(11, 1.0, 10), _trained(12, 2.0, 10)])


def test_all_zero_weights_keep_previous_model() -> None:
    strategy = _strategy(weighting=lambda outcomes, updates: [0.0] * len(outcomes))
    arrays, metrics = strategy.aggregate_train(1, [_trained(11, 1.0, 10), _trained(12, 2.0, 10)])
    assert arrays is None
    assert metrics["trained"] == 2
    assert strategy.rounds[1].kept_previous_model is True
    assert all(o.weight == 0.0 for o in strategy.rounds[1].outcomes)


def test_zero_examples_everywhere_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, _ = strategy.aggregate_train(1, [_trained(11, 1.0, 0), _trained(12, 2.0, 0)])
    assert arrays is None
    assert strategy.rounds[1].kept_previous_model is True


def test_rounds_are_logged_separately() -> None:
    strategy = _strategy()
    strategy.aggregate_train(1, [_trained(11, 1.0, 10)])
    strategy.aggregate_train(2, [_trained(11, 1.0, 10), _declined(12)])
    assert isinstance(strategy.rounds[1], RoundLog)
    assert len(strategy.rounds[1].outcomes) == 1
    assert len(strategy.rounds[2].outcomes) == 2
    assert all(o.round == 2 for o in strategy.rounds[2].outcomes)


# ---------------------------------------------------------------------- aggregate_evaluate
def test_aggregate_evaluate_is_example_weighted() -> None:
    strategy = _strategy()
    metrics = strategy.aggregate_evaluate(
        1, [_eval_reply(11, 10, 1.0, 0.5), _eval_reply(12, 30, 2.0, 0.9), _failed(13)]
    )
    assert metrics is not None
    assert metrics["val-loss"] == pytest.approx(1.75)
    assert metrics["val-accuracy"] == pytest.approx(0.8)
    assert strategy.rounds[1].val_loss == pytest.approx(1.75)
    assert strategy.rounds[1].val_accuracy == pytest.approx(0.8)


def test_aggregate_evaluate_without_examples_is_none() -> None:
    strategy = _strategy()
    assert (
        strategy.aggregate_evaluate(1, [_eval_reply(11, 0, 0.0, 0.0), _eval_reply(12, 0, 0.0, 0.0)])
        is None
    )
    assert strategy.aggregate_evaluate(2, [_failed(11)]) is None
    assert strategy.aggregate_evaluate(3, []) is None


def test_aggregate_evaluate_ignores_client_without_examples() -> None:
    strategy = _strategy()
    metrics = strategy.aggregate_evaluate(
        1, [_eval_reply(11, 20, 0.5, 0.75), _eval_reply(12, 0, 0.0, 0.0)]
    )
    assert metrics["val-loss"] == pytest.approx(0.5)
    assert metrics["val-accuracy"] == pytest.approx(0.75)
