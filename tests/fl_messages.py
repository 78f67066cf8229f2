"""Hand-built Flower messages as a ServerApp receives them (shared by the strategy tests).

Outside a running app Flower refuses to create messages; :func:`server_identity` identifies
the test as the ServerApp does (use it from an autouse fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from protocol import keys
from protocol.records import to_record

SHAPE = (2, 3)
SERVER_NODE = 0  # the node id the ServerApp runtime gives itself (SUPERLINK_NODE_ID)


@contextmanager
def server_identity() -> Iterator[None]:
    """Run as task 1 of run 42 on the ServerApp's node; restore Flower's identity after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, SERVER_NODE
    try:
        yield
    finally:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = saved


def incoming(node: int, kind: str = MessageType.TRAIN) -> Message:
    """The instruction the server sent to ``node`` (replies answer it)."""
    arrays = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    return Message(
        content=RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}),
        dst_node_id=node,
        message_type=kind,
    )


def trained(
    node: int,
    value: float,
    n: int,
    loss: float = 1.0,
    eps: float = 1.0,
    weights: dict[str, np.ndarray] | None = None,
    to: Message | None = None,
) -> Message:
    """A train reply with weights ``w = value`` (or ``weights``) from ``n`` examples."""
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
    if weights is None:
        weights = {"w": np.full(SHAPE, value, dtype=np.float32)}
    content = RecordDict(
        {keys.ARRAYS: to_record(weights), keys.METRICS: metrics, keys.STATUS: status}
    )
    return Message(content=content, reply_to=to if to is not None else incoming(node))


def declined(node: int, reason: str = "declined: budget spent", eps: float = 3.9) -> Message:
    """A train reply from a client that declined (privacy budget): no arrays."""
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
    return Message(content=content, reply_to=incoming(node))


def failed(node: int, reason: str = "boom") -> Message:
    """Flower's error reply for a ClientApp that raised."""
    return Message(Error(code=0, reason=reason), reply_to=incoming(node))


def eval_reply(node: int, n: int, loss: float, acc: float) -> Message:
    """An evaluate reply on ``n`` validation examples."""
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: n, keys.PARTITION_ID: node, keys.VAL_LOSS: loss, keys.VAL_ACCURACY: acc}
    )
    return Message(
        content=RecordDict({keys.METRICS: metrics}),
        reply_to=incoming(node, MessageType.EVALUATE),
    )
