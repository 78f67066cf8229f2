"""WeightedFedAvg's validation and update-space aggregation over hand-built Flower replies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fl_messages import (
    SERVER_NODE,
    SHAPE,
    declined,
    eval_reply,
    failed,
    server_identity,
    trained,
)
from flwr.app import ConfigRecord, MessageType

from fl_server.replies import ClientOutcome, NoClientSucceededError, RoundLog, train_metrics
from fl_server.weighted import WeightedFedAvg, weight_by_examples
from protocol import keys
from protocol.records import from_record, to_record
from reliability import RoundInput


@pytest.fixture(autouse=True)
def _serverapp_identity():
    with server_identity():
        yield


def _strategy(global_value: float = 0.0, **kwargs) -> WeightedFedAvg:
    """A strategy that has sent the global model ``w = global_value`` (as configure_train does)."""
    strategy = WeightedFedAvg(
        fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2, seed=0, **kwargs
    )
    strategy.current = to_record({"w": np.full(SHAPE, global_value, dtype=np.float32)})
    return strategy


def _w(arrays) -> np.ndarray:
    assert arrays is not None, "expected a new global model"
    return from_record(arrays)["w"]


# ---------------------------------------------------------------------- the messages themselves
def test_reply_comes_from_the_node_it_was_sent_to() -> None:
    reply = trained(11, 1.0, 10)
    assert reply.metadata.src_node_id == 11
    assert reply.metadata.dst_node_id == SERVER_NODE
    assert reply.metadata.run_id == 42
    assert reply.metadata.message_type == MessageType.TRAIN
    assert failed(12).has_error()


# ---------------------------------------------------------------------- weight_by_examples
def test_weight_by_examples() -> None:
    updates = ({"w": np.ones(SHAPE)}, {"w": np.zeros(SHAPE)})
    weights, out_updates, details = weight_by_examples(RoundInput(1, (1, 2), updates, (5, 15)))
    np.testing.assert_allclose(weights, [0.25, 0.75])
    assert out_updates is updates
    assert details == {}


def test_weight_by_examples_without_examples_is_all_zero() -> None:
    updates = ({"w": np.ones(SHAPE)}, {"w": np.zeros(SHAPE)})
    weights, _, _ = weight_by_examples(RoundInput(1, (1, 2), updates, (0, 0)))
    assert np.all(weights == 0) and np.all(np.isfinite(weights))


# ---------------------------------------------------------------------- aggregate_train
def test_example_weighted_mean() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(
        1, [trained(11, 1.0, 100, loss=1.0, eps=1.0), trained(12, 3.0, 300, loss=2.0, eps=2.0)]
    )
    w = _w(arrays)
    assert w.shape == SHAPE
    np.testing.assert_allclose(w, 2.5)
    log = strategy.rounds[1]
    assert [o.node_id for o in log.outcomes] == [11, 12]
    assert [o.status for o in log.outcomes] == ["trained", "trained"]
    assert [o.weight for o in log.outcomes] == pytest.approx([0.25, 0.75])
    assert [o.num_examples for o in log.outcomes] == [100, 300]
    assert [o.partition_id for o in log.outcomes] == [11, 12]
    assert all(math.isnan(o.score) and math.isnan(o.reputation) for o in log.outcomes)
    assert not log.kept_previous_model
    assert metrics is not None
    assert metrics["trained"] == 2
    assert metrics["declined"] == 0
    assert metrics["rejected"] == 0
    assert metrics["failed"] == 0
    assert 1.0 <= metrics["train-loss"] <= 2.0  # a mean of the trained clients' losses
    assert metrics["epsilon-max"] == pytest.approx(2.0)
    assert metrics["epsilon-mean"] == pytest.approx(1.5)


def test_aggregation_is_in_update_space_around_the_global_model() -> None:
    """g + sum a_i (w_i - g): with g = 1 and weights 0.25/0.75, 1 + 0.25*1 + 0.75*3 = 3.5."""
    seen: list[RoundInput] = []

    def record(r: RoundInput):
        seen.append(r)
        return weight_by_examples(r)

    strategy = _strategy(global_value=1.0, weighting=record)
    arrays, _ = strategy.aggregate_train(1, [trained(11, 2.0, 100), trained(12, 4.0, 300)])
    np.testing.assert_allclose(_w(arrays), 3.5)
    (r,) = seen
    np.testing.assert_allclose(r.updates[0]["w"], 1.0)
    np.testing.assert_allclose(r.updates[1]["w"], 3.0)


def test_aggregate_keeps_dtype() -> None:
    arrays, _ = _strategy().aggregate_train(1, [trained(1, 1.0, 1), trained(2, 2.0, 3)])
    assert _w(arrays).dtype == np.float32


def test_float64_reply_is_accepted_and_cast_to_the_global_dtype() -> None:
    strategy = _strategy()
    reply = trained(11, 0.0, 10, weights={"w": np.full(SHAPE, 2.0, dtype=np.float64)})
    arrays, metrics = strategy.aggregate_train(1, [reply])
    assert metrics["trained"] == 1
    w = _w(arrays)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, 2.0)


def test_custom_weighting_is_used() -> None:
    seen: list[tuple[tuple[int, ...], int, tuple[int, ...]]] = []

    def first_only(r: RoundInput):
        seen.append((r.client_ids, len(r.updates), r.num_examples))
        return np.array([1.0, 0.0]), r.updates, {}

    strategy = _strategy(weighting=first_only)
    arrays, _ = strategy.aggregate_train(1, [trained(11, 1.0, 100), trained(12, 3.0, 300)])
    assert seen == [((11, 12), 2, (100, 300))]
    np.testing.assert_allclose(_w(arrays), 1.0)
    assert [o.weight for o in strategy.rounds[1].outcomes] == [1.0, 0.0]


def test_updates_and_details_from_the_weighting_are_used() -> None:
    def halve(r: RoundInput):
        updates = tuple({k: 0.5 * v for k, v in u.items()} for u in r.updates)
        details = {"score": np.array([0.9, 0.1]), "reputation": np.array([0.8, 0.2])}
        return np.array([0.5, 0.5]), updates, details

    strategy = _strategy(global_value=1.0, weighting=halve)
    arrays, _ = strategy.aggregate_train(1, [trained(11, 3.0, 10), trained(12, 5.0, 10)])
    # updates 2 and 4, halved to 1 and 2, averaged: 1 + 1.5
    np.testing.assert_allclose(_w(arrays), 2.5)
    outcomes = strategy.rounds[1].outcomes
    assert [o.score for o in outcomes] == pytest.approx([0.9, 0.1])
    assert [o.reputation for o in outcomes] == pytest.approx([0.8, 0.2])


def test_declined_and_failed_are_counted_and_left_out() -> None:
    strategy = _strategy()
    replies = [
        trained(11, 3.0, 10),
        declined(12, reason="declined: round 1 would take epsilon past 4"),
        failed(13, reason="boom"),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(_w(arrays), 3.0)
    assert metrics["trained"] == 1
    assert metrics["declined"] == 1
    assert metrics["failed"] == 1
    assert metrics["rejected"] == 0
    by_node = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert by_node[11].status == "trained" and by_node[11].weight == pytest.approx(1.0)
    assert by_node[12].status == "declined" and math.isnan(by_node[12].weight)
    assert by_node[12].reason == "declined: round 1 would take epsilon past 4"
    assert by_node[12].epsilon == pytest.approx(3.9)
    assert by_node[13].status == "failed" and math.isnan(by_node[13].weight)
    assert "boom" in by_node[13].reason
    assert by_node[13].reason.startswith("client error")
    assert not strategy.rounds[1].kept_previous_model


def test_reply_without_arrays_is_rejected() -> None:
    strategy = _strategy()
    bad = trained(12, 5.0, 10)
    del bad.content[keys.ARRAYS]
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10), bad])
    np.testing.assert_allclose(_w(arrays), 1.0)
    assert (metrics["rejected"], metrics["failed"], metrics["trained"]) == (1, 0, 1)
    outcome = strategy.rounds[1].outcomes[1]
    assert outcome.status == "rejected"
    assert "arrays" in outcome.reason


def test_reply_without_metrics_is_rejected() -> None:
    strategy = _strategy()
    bad = trained(12, 5.0, 10)
    del bad.content[keys.METRICS]
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10), bad])
    np.testing.assert_allclose(_w(arrays), 1.0)
    assert (metrics["rejected"], metrics["failed"]) == (1, 0)
    outcome = strategy.rounds[1].outcomes[1]
    assert outcome.status == "rejected"
    assert "metrics" in outcome.reason


def test_malformed_metrics_are_rejected() -> None:
    strategy = _strategy()
    bad = trained(12, 5.0, 10)
    bad.content[keys.METRICS][keys.NUM_EXAMPLES] = [1, 2]
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10), bad])
    np.testing.assert_allclose(_w(arrays), 1.0)
    assert metrics["rejected"] == 1
    outcome = strategy.rounds[1].outcomes[1]
    assert outcome.status == "rejected"
    assert "malformed metrics" in outcome.reason


def test_nan_and_wrong_shape_updates_are_rejected() -> None:
    strategy = _strategy(global_value=0.5)
    nan = np.full(SHAPE, 1.0, dtype=np.float32)
    nan[0, 1] = np.nan
    replies = [
        trained(11, 2.0, 10),
        trained(12, 0.0, 1000, weights={"w": nan}),
        trained(13, 0.0, 1000, weights={"w": np.full((3, 2), 9.0, dtype=np.float32)}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(_w(arrays), np.full(SHAPE, 2.0, dtype=np.float32))
    assert (metrics["trained"], metrics["rejected"], metrics["failed"]) == (1, 2, 0)
    by_node = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert by_node[11].weight == pytest.approx(1.0)
    for node, what in ((12, "NaN"), (13, "shape")):
        assert by_node[node].status == "rejected"
        assert "'w'" in by_node[node].reason and what in by_node[node].reason
        assert math.isnan(by_node[node].weight)
    assert not strategy.rounds[1].kept_previous_model


@pytest.mark.parametrize(
    ("weights", "needle"),
    [
        ({"w": np.full(SHAPE, np.inf, dtype=np.float32)}, "NaN/Inf"),
        ({}, "missing parameters: 'w'"),
        (
            {"w": np.ones(SHAPE, dtype=np.float32), "b": np.ones(1, np.float32)},
            "unexpected parameters: 'b'",
        ),
        ({"w": np.ones(SHAPE, dtype=np.int64)}, "dtype"),
    ],
)
def test_invalid_update_is_rejected(weights: dict[str, np.ndarray], needle: str) -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(
        1, [trained(11, 1.0, 10), trained(12, 0.0, 10, weights=weights)]
    )
    np.testing.assert_allclose(_w(arrays), 1.0)
    assert metrics["rejected"] == 1
    bad = strategy.rounds[1].outcomes[1]
    assert bad.status == "rejected"
    assert needle in bad.reason


@pytest.mark.parametrize("n", [0, -5])
def test_reply_with_invalid_example_count_is_rejected(n: int) -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10), trained(12, 7.0, n)])
    np.testing.assert_allclose(_w(arrays), 1.0)
    assert (metrics["trained"], metrics["rejected"]) == (1, 1)
    bad = strategy.rounds[1].outcomes[1]
    assert bad.status == "rejected"
    assert "example count" in bad.reason or "'num-examples'" in bad.reason


def test_zero_examples_everywhere_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 0), trained(12, 2.0, 0)])
    assert arrays is None
    assert metrics["rejected"] == 2
    assert strategy.rounds[1].kept_previous_model is True


def test_all_failed_raises() -> None:
    strategy = _strategy()
    with pytest.raises(NoClientSucceededError, match="no client succeeded") as err:
        strategy.aggregate_train(3, [failed(11, "boom"), failed(12, "bang")])
    assert "round 3" in str(err.value)
    assert "boom" in str(err.value) and "bang" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_rejected_and_failed_without_trained_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 0), failed(12)])
    assert arrays is None
    assert (metrics["rejected"], metrics["failed"]) == (1, 1)
    assert strategy.rounds[1].kept_previous_model is True


def test_all_declined_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(2, [declined(11), declined(12)])
    assert arrays is None
    assert metrics["declined"] == 2
    assert metrics["trained"] == 0
    assert math.isnan(metrics["train-loss"])
    assert strategy.rounds[2].kept_previous_model is True


def test_declined_and_failed_without_trained_keeps_previous_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [declined(11), failed(12)])
    assert arrays is None
    assert (metrics["declined"], metrics["failed"]) == (1, 1)
    assert strategy.rounds[1].kept_previous_model is True


@pytest.mark.parametrize(
    "bad", [[-1.0, 2.0], [float("nan"), 1.0], [float("inf"), 1.0], [1.0], [1.0, 1.0, 1.0]]
)
def test_invalid_weights_raise(bad: list[float]) -> None:
    strategy = _strategy(weighting=lambda r: (np.array(bad), r.updates, {}))
    with pytest.raises(ValueError, match="invalid weights"):
        strategy.aggregate_train(1, [trained(11, 1.0, 10), trained(12, 2.0, 10)])


def test_all_zero_weights_keep_previous_model() -> None:
    strategy = _strategy(weighting=lambda r: (np.zeros(len(r)), r.updates, {}))
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10), trained(12, 2.0, 10)])
    assert arrays is None
    assert metrics["trained"] == 2
    assert strategy.rounds[1].kept_previous_model is True
    assert all(o.weight == 0.0 for o in strategy.rounds[1].outcomes)


def test_non_finite_aggregate_is_never_published() -> None:
    def blow_up(r: RoundInput):
        updates = tuple({k: np.full_like(v, np.inf) for k, v in u.items()} for u in r.updates)
        return np.array([0.5, 0.5]), updates, {}

    strategy = _strategy(weighting=blow_up)
    arrays, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10), trained(12, 2.0, 10)])
    assert arrays is None
    assert metrics["trained"] == 2
    assert strategy.rounds[1].kept_previous_model is True


def test_rounds_are_logged_separately() -> None:
    strategy = _strategy()
    strategy.aggregate_train(1, [trained(11, 1.0, 10)])
    strategy.aggregate_train(2, [trained(11, 1.0, 10), declined(12)])
    assert isinstance(strategy.rounds[1], RoundLog)
    assert len(strategy.rounds[1].outcomes) == 1
    assert len(strategy.rounds[2].outcomes) == 2
    assert all(o.round == 2 for o in strategy.rounds[2].outcomes)


# ---------------------------------------------------------------------- train_metrics
def test_train_metrics_counts_every_status() -> None:
    log = RoundLog(
        outcomes=[
            ClientOutcome(1, 11, status="trained", epsilon=1.0, train_loss=2.0),
            ClientOutcome(1, 12, status="trained", epsilon=3.0, train_loss=4.0),
            ClientOutcome(1, 13, status="declined", epsilon=3.9),
            ClientOutcome(1, 14, status="rejected", reason="parameter 'w' has 1 NaN/Inf values"),
            ClientOutcome(1, 15, status="rejected", train_loss=100.0),
            ClientOutcome(1, 16, status="failed"),
        ]
    )
    m = train_metrics(log)
    assert (m["trained"], m["declined"], m["rejected"], m["failed"]) == (2, 1, 2, 1)
    assert m["train-loss"] == pytest.approx(3.0)  # trained clients only
    assert m["epsilon-max"] == pytest.approx(3.9)
    assert m["epsilon-mean"] == pytest.approx((1.0 + 3.0 + 3.9) / 3)


# ---------------------------------------------------------------------- aggregate_evaluate
def test_aggregate_evaluate_is_example_weighted() -> None:
    strategy = _strategy()
    metrics = strategy.aggregate_evaluate(
        1, [eval_reply(11, 10, 1.0, 0.5), eval_reply(12, 30, 2.0, 0.9), failed(13)]
    )
    assert metrics is not None
    assert metrics["val-loss"] == pytest.approx(1.75)
    assert metrics["val-accuracy"] == pytest.approx(0.8)
    assert strategy.rounds[1].val_loss == pytest.approx(1.75)
    assert strategy.rounds[1].val_accuracy == pytest.approx(0.8)


def test_aggregate_evaluate_without_examples_is_none() -> None:
    strategy = _strategy()
    assert (
        strategy.aggregate_evaluate(1, [eval_reply(11, 0, 0.0, 0.0), eval_reply(12, 0, 0.0, 0.0)])
        is None
    )
    assert strategy.aggregate_evaluate(2, [failed(11)]) is None
    assert strategy.aggregate_evaluate(3, []) is None


def test_aggregate_evaluate_ignores_client_without_examples() -> None:
    strategy = _strategy()
    metrics = strategy.aggregate_evaluate(
        1, [eval_reply(11, 20, 0.5, 0.75), eval_reply(12, 0, 0.0, 0.0)]
    )
    assert metrics["val-loss"] == pytest.approx(0.5)
    assert metrics["val-accuracy"] == pytest.approx(0.75)


# ---------------------------------------------------------------------- hostile replies
def test_duplicate_partition_id_is_rejected_not_fatal() -> None:
    strategy = _strategy()
    # node 105 claims partition 5, like node 5 (partition id = node % 100); unbound so far:
    # neither is trusted with it
    arrays, metrics = strategy.aggregate_train(
        1, [trained(5, 1.0, 10), trained(105, 2.0, 10), trained(6, 1.0, 10)]
    )
    assert arrays is not None and metrics["rejected"] == 2
    outcomes = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert "claimed by 2 nodes" in outcomes[105].reason
    # once node 5's reply is accepted, partition 5 is bound to it: 105's claim is rejected
    strategy.aggregate_train(2, [trained(5, 1.0, 10), trained(6, 1.0, 10)])
    _, metrics = strategy.aggregate_train(3, [trained(105, 2.0, 10), trained(5, 1.0, 10)])
    outcomes = {o.node_id: o for o in strategy.rounds[3].outcomes}
    assert outcomes[105].status == "rejected" and "bound to node 5" in outcomes[105].reason
    assert outcomes[5].status == "trained"


class _Grid:
    """The one Grid call configure_train makes: which nodes are connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_unreachable_node_is_one_failure_not_two() -> None:
    """The SuperLink answers for an unreachable node with its own id as the source.

    The reply is matched to its node through the id of the message it answers, so the node
    is counted once (failed), not also as silent.
    """
    from flwr.app import Error, Message

    strategy = _strategy()
    sent = list(strategy.configure_train(1, strategy.current, ConfigRecord(), _Grid([11, 12, 13])))
    for msg in sent:  # what the grid does when it pushes them
        msg.metadata.__dict__["_message_id"] = msg.object_id
    by_node = {m.metadata.dst_node_id: m for m in sent}
    from_superlink = Message(Error(code=0, reason="node unavailable"), reply_to=by_node[13])
    from_superlink.metadata.__dict__["_src_node_id"] = 1  # SUPERLINK_NODE_ID, as Flower does
    assert from_superlink.metadata.src_node_id == 1
    replies = [trained(11, 1.0, 10, to=by_node[11]), trained(12, 1.0, 10, to=by_node[12])]
    replies.append(from_superlink)
    _, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["trained"], metrics["failed"]) == (2, 1)
    outcomes = {o.node_id: o for o in strategy.rounds[1].outcomes}
    assert sorted(outcomes) == [11, 12, 13] and len(strategy.rounds[1].outcomes) == 3
    assert outcomes[13].status == "failed" and "node unavailable" in outcomes[13].reason


def test_a_node_that_never_answers_is_still_counted_as_silent() -> None:
    strategy = _strategy()
    strategy.configure_train(1, strategy.current, ConfigRecord(), _Grid([11, 12]))
    _, metrics = strategy.aggregate_train(1, [trained(11, 1.0, 10)])
    assert (metrics["trained"], metrics["failed"]) == (1, 1)
    silent = [o for o in strategy.rounds[1].outcomes if o.node_id == 12]
    assert len(silent) == 1 and "no reply" in silent[0].reason
