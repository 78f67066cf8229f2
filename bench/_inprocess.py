"""In-process federations for the benchmarks: the project's client and server code, no transport.

Each round, every client trains through the real local privacy mode (:mod:`tasks.training`,
with its ledger and node state kept across rounds) and answers a real Flower train message
with the reply the ClientApp builds (:func:`fl_client.app.train_reply`); the strategy the
ServerApp uses aggregates those replies. Only Flower's transport (SuperLink, SuperNodes) is
left out, which changes no number and lets a grid of federations run on a few cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fl_client.app import train_reply
from privacy import derive_seed
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.data import ClientData
from tasks.models import ModelSpec, build_model, set_weights
from tasks.training import LocalResult, LocalTask, MemoryLedgerStore, TrainConfig, trainer_for

Weights = dict[str, np.ndarray]
Observer = Callable[[int, int, LocalResult, float], None]
"""Called as ``observe(round, partition_id, result, wall_seconds)`` after each client's round."""


def train_message(node: int, server_round: int, global_record: ArrayRecord) -> Message:
    """The server's train message to ``node``: the global weights and the round number."""
    content = RecordDict(
        {
            keys.ARRAYS: global_record,
            keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def run_rounds(
    settings: RunSettings,
    spec: ModelSpec,
    data: Mapping[int, ClientData],
    strategy: Any,
    weights: Weights,
    *,
    observe: Observer | None = None,
    keep: Callable[[int], bool] = lambda pid: True,
) -> Weights:
    """Run ``settings.num_rounds`` rounds in process; return the final global weights.

    Parameters
    ----------
    settings : RunSettings
        The run's settings (privacy mode, rounds, seed, delta, accountant, ...).
    spec : ModelSpec
        The model every client builds before loading the global weights.
    data : mapping of int to ClientData
        Each client's data by partition id (node id is partition id + 1).
    strategy
        A strategy of :func:`fl_server.registry.make_strategy`.
    weights : dict of str to numpy.ndarray
        The initial global weights.
    observe : callable or None
        See :data:`Observer`.
    keep : callable
        ``keep(pid)`` False drops that client's replies before aggregation (an oracle that
        knows who is unreliable); it still trains, so its ledger and state advance.
    """
    ledgers = {
        pid: MemoryLedgerStore(settings.privacy_delta, settings.privacy_accountant) for pid in data
    }
    states: dict[int, dict[str, Any]] = {pid: {} for pid in data}
    mode = trainer_for(settings.privacy_mode)
    config = TrainConfig.from_settings(settings)
    device = torch.device("cpu")
    g = weights
    for rnd in range(1, settings.num_rounds + 1):
        record = to_record(g)
        strategy.current = record  # as configure_train does
        replies = []
        for pid, client_data in data.items():
            local = build_model(spec, settings.seed)
            set_weights(local, g)
            task = LocalTask(
                config=config,
                data=client_data,
                model=local.to(device),
                device=device,
                server_round=rnd,
                seed=derive_seed(settings.seed, pid, rnd),
                ledger=ledgers[pid],
                state=states[pid],
                partition_id=pid,
                state_dir=None,
            )
            t0 = time.perf_counter()
            out = mode(task)
            if observe is not None:
                observe(rnd, pid, out, time.perf_counter() - t0)
            if keep(pid):
                msg = train_message(pid + 1, rnd, record)
                replies.append(train_reply(msg, out, settings, pid))
        arrays, _ = strategy.aggregate_train(rnd, replies)
        if arrays is not None:
            g = from_record(arrays)
    return g
