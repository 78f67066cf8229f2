"""Hostile replies change nothing: one parser for every number, bound ids, screened updates.

Each rule is checked on hand-built Flower replies against the real strategy: a hostile reply is
rejected with its reason (never an exception), the round goes on with the others, and only
accepted replies change what the server remembers of a client.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fl_messages import SHAPE, declined, eval_reply, incoming, server_identity, trained
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fl_server.weighted import WeightedFedAvg
from protocol import keys
from protocol.records import from_record, to_record
from reliability import NumberRule, cap_counts, norm_outliers, parse_number


@pytest.fixture(autouse=True)
def _serverapp_identity():
    with server_identity():
        yield


def _strategy() -> WeightedFedAvg:
    s = WeightedFedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2, seed=0)
    s.current = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    return s


def _with(msg: Message, **metrics: object) -> Message:
    """``msg`` with some metric entries replaced (as a hostile ClientApp would send)."""
    record = msg.content.metric_records[keys.METRICS]
    for key, value in metrics.items():
        record[key.replace("_", "-")] = value  # type: ignore[assignment]
    return msg


# ------------------------------------------------------------------ the parser, rule by rule
@pytest.mark.parametrize(
    ("value", "rule", "expected"),
    [
        (3, NumberRule(integer=True, low=0), 3),
        (120.0, NumberRule(integer=True, low=0), 120),
        (math.inf, NumberRule(low=0, allow_inf=True), math.inf),
        (0.5, NumberRule(low=0, high=1), 0.5),
        (math.nan, NumberRule(allow_nan=True), None),
    ],
)
def test_parser_accepts(value, rule, expected) -> None:
    got, problem = parse_number("x", value, rule)
    assert problem == ""
    assert math.isnan(got) if expected is None else got == expected


@pytest.mark.parametrize(
    ("value", "rule", "needle"),
    [
        (math.inf, NumberRule(integer=True, low=0), "must be finite"),
        (-math.inf, NumberRule(low=0, allow_inf=True), "must be finite"),
        (math.nan, NumberRule(low=0), "got NaN"),
        (120.5, NumberRule(integer=True, low=0), "must be an integer, got 120.5"),
        (-1.0, NumberRule(low=0), "must be in [0, inf], got -1.0"),
        (10**13, NumberRule(integer=True, low=0, high=2**40), "must be in"),
        (True, NumberRule(), "must be a number, got bool"),
        ("3", NumberRule(), "must be a number, got str"),
        ([1.0], NumberRule(), "must be a number, got list"),
    ],
)
def test_parser_rejects_with_the_reason(value, rule, needle) -> None:
    got, problem = parse_number("x", value, rule)
    assert math.isnan(got) and needle in problem and "'x'" in problem


def test_leave_one_out_caps_and_outliers() -> None:
    assert cap_counts([100, 120, 10**12], 10) == [100, 120, 1100]
    assert cap_counts([10**12], 10) == [10**12]  # alone, its weight is 1 anyway
    assert norm_outliers([1.0, 1.2, 0.9, 1e30], 10) == [False, False, False, True]
    assert norm_outliers([1.0, 1e30], 10) == [False, False]  # no median of fewer than 3


# ------------------------------------------------------------------ replies, end to end
@pytest.mark.parametrize(
    ("metrics", "needle"),
    [
        ({"num_examples": math.inf}, "'num-examples' must be finite"),
        ({"num_examples": 120.5}, "'num-examples' must be an integer, got 120.5"),
        ({"partition_id": math.inf}, "'partition-id' must be finite"),
        ({"declined": math.inf}, "'declined' must be finite"),
        ({"epsilon": math.nan}, "'epsilon' must be a number, got NaN"),
        ({"epsilon": -1.0}, "'epsilon' must be in [0, inf]"),
        ({"train_seconds": -3.0}, "'train-seconds' must be in"),
    ],
)
def test_a_hostile_number_is_a_rejection_not_a_crash(metrics, needle) -> None:
    s = _strategy()
    replies = [trained(1, 1.0, 10), trained(2, 1.0, 10), _with(trained(3, 50.0, 10), **metrics)]
    arrays, out = s.aggregate_train(1, replies)
    assert arrays is not None and out["trained"] == 2 and out["rejected"] == 1
    bad = next(o for o in s.rounds[1].outcomes if o.node_id == 3)
    assert bad.status == "rejected" and needle in bad.reason, bad.reason
    np.testing.assert_allclose(from_record(arrays)["w"], 1.0)


def test_a_huge_example_count_is_capped_to_ten_times_the_median_of_the_others() -> None:
    s = _strategy()
    replies = [trained(1, 1.0, 100), trained(2, 1.0, 100), trained(3, 4.0, 10**12)]
    arrays, _ = s.aggregate_train(1, replies)
    bad = next(o for o in s.rounds[1].outcomes if o.node_id == 3)
    assert bad.status == "trained" and bad.num_examples == 1000 and "capped" in bad.reason
    # weight 1000/1200, not 0.999999999
    assert bad.weight == pytest.approx(1000 / 1200)
    np.testing.assert_allclose(from_record(arrays)["w"], (100 + 100 + 4 * 1000) / 1200, rtol=1e-6)


def test_a_declined_reply_claiming_another_clients_id_changes_nothing() -> None:
    s = _strategy()
    s.aggregate_train(1, [trained(1, 1.0, 10, eps=1.0), trained(2, 1.0, 10, eps=1.0)])
    # node 9 says it is partition 1 (node % 100), declined, with epsilon 1e9
    liar = declined(101, eps=1e9)
    _, out = s.aggregate_train(2, [trained(1, 1.0, 10, eps=2.0), trained(2, 1.0, 10), liar])
    outcome = next(o for o in s.rounds[2].outcomes if o.node_id == 101)
    assert outcome.status == "rejected" and "bound to node 1" in outcome.reason
    assert s.client_epsilon[1] == 2.0  # the honest client's record, not the liar's
    _, out = s.aggregate_train(3, [trained(1, 1.0, 10, eps=3.0), trained(2, 1.0, 10)])
    assert out["trained"] == 2 and out["rejected"] == 0  # the honest client is still accepted


def test_only_accepted_replies_update_what_the_server_remembers() -> None:
    s = _strategy()
    huge = trained(3, 1e30, 10, eps=5.0)
    s.aggregate_train(1, [trained(1, 1.0, 10, eps=1.0), trained(2, 1.0, 10, eps=1.0), huge])
    assert 3 not in s.client_epsilon  # its update was rejected (norm): nothing remembered
    assert s.client_epsilon == {1: 1.0, 2: 1.0}
    bad = next(o for o in s.rounds[1].outcomes if o.node_id == 3)
    assert bad.status == "rejected" and "update norm" in bad.reason


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_replies_to_messages_not_sent_this_round_are_dropped() -> None:
    s = _strategy()
    sent = list(s.configure_train(1, s.current, ConfigRecord(), _Grid([1, 2])))
    for msg in sent:
        msg.metadata.__dict__["_message_id"] = msg.object_id
    by_node = {m.metadata.dst_node_id: m for m in sent}
    replies = [
        trained(1, 1.0, 10, to=by_node[1]),
        trained(2, 1.0, 10, to=by_node[2]),
        trained(7, 99.0, 10),  # a node never sampled, answering a message it made up
    ]
    arrays, out = s.aggregate_train(1, replies)
    np.testing.assert_allclose(from_record(arrays)["w"], 1.0)
    assert out["trained"] == 2 and out["rejected"] == 1
    bad = next(o for o in s.rounds[1].outcomes if o.node_id == 7)
    assert "did not send" in bad.reason


def test_a_hostile_evaluate_reply_is_left_out() -> None:
    s = _strategy()
    good = [eval_reply(1, 10, 0.5, 0.8), eval_reply(2, 30, 0.7, 0.6)]
    bad = eval_reply(3, 10, 0.1, 0.9)
    bad.content.metric_records[keys.METRICS][keys.NUM_EXAMPLES] = math.inf
    worse = Message(
        content=RecordDict(
            {keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 10, keys.VAL_ACCURACY: 7.0})}
        ),
        reply_to=incoming(4, MessageType.EVALUATE),
    )
    metrics = s.aggregate_evaluate(1, [*good, bad, worse])
    assert metrics is not None
    assert metrics[keys.VAL_ACCURACY] == pytest.approx((10 * 0.8 + 30 * 0.6) / 40)


def test_with_two_replies_a_huge_update_is_screened_against_the_last_rounds_median() -> None:
    s = _strategy()
    s.aggregate_train(1, [trained(1, 1.0, 10), trained(2, 1.1, 10), trained(3, 0.9, 10)])
    arrays, out = s.aggregate_train(2, [trained(1, 1.0, 10), trained(3, 1e30, 10)])
    bad = next(o for o in s.rounds[2].outcomes if o.node_id == 3)
    assert bad.status == "rejected" and "update norm" in bad.reason
    assert out["trained"] == 1
    np.testing.assert_allclose(from_record(arrays)["w"], 1.0)
