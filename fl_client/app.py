"""Flower ClientApp: a thin adapter from Flower messages to ``tasks`` and ``privacy``."""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from privacy import derive_seed
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.local import LocalResult, LocalTask, get_mode
from tasks.models import ModelSpec, build_model, set_weights
from tasks.node_data import load_node_data, task_shape
from tasks.partition import ClientData, load_client_data, specs_from_settings
from tasks.training import evaluate, select_device
from tasks.unreliable import corrupt_data, corrupt_reply

from .ledger_store import LedgerStore, ledger_path

app = ClientApp()
log = logging.getLogger("fedpriv.client")

STATE_KEY = "fedpriv-client-state"


def _load_state(context: Context) -> dict[str, Any]:
    """The modes' JSON-able per-client state (DP-SGD plan, noisy objective), from node state."""
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return {}
    return {name: json.loads(str(text)) for name, text in record.items()}


def _save_state(context: Context, state: dict[str, Any]) -> None:
    if state:
        context.state.config_records[STATE_KEY] = ConfigRecord(
            {name: json.dumps(value) for name, value in state.items()}
        )


def _identity(context: Context, settings: RunSettings) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config, as Flower sets them."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError(
            "node config must set partition-id (and num-partitions); "
            "simulation sets them, a SuperNode takes --node-config"
        )
    num = int(node.get("num-partitions", settings.num_clients))
    return int(node["partition-id"]), num


@functools.lru_cache(maxsize=64)
def _partition_data(settings: RunSettings, partition_id: int, num_partitions: int) -> ClientData:
    dspec, pspec = specs_from_settings(settings, num_partitions)
    data = load_client_data(dspec, pspec, partition_id, settings.val_fraction)
    return corrupt_data(data, settings, partition_id)  # simulated unreliable participants


def _client_data(context: Context, settings: RunSettings, pid: int, num: int) -> ClientData:
    """The node's own file (node config ``data-path``, deployment) or its simulated partition."""
    data_path = context.node_config.get("data-path")
    if data_path:
        return load_node_data(
            str(data_path), task_shape(settings), settings.val_fraction, settings.seed, pid
        )
    return _partition_data(settings, pid, num)


def _model(settings: RunSettings, data: ClientData, msg: Message) -> torch.nn.Module:
    spec = ModelSpec(
        settings.model_name,
        data.input_shape,
        data.num_classes,
        settings.model_hidden,
        settings.dataset_name,
    )
    model = build_model(spec, seed=settings.seed)
    set_weights(model, from_record(msg.content.array_records[keys.ARRAYS]))
    return model


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("inf")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data under the configured privacy mode."""
    settings = RunSettings.from_run_config(context.run_config)
    pid, num = _identity(context, settings)
    data = _client_data(context, settings, pid, num)
    device = select_device(settings.device)
    model = _model(settings, data, msg).to(device)
    server_round = int(str(msg.content.config_records[keys.CONFIG][keys.SERVER_ROUND]))
    path = ledger_path(dict(context.node_config), settings.output_dir, pid)
    store = LedgerStore(context, path, settings.privacy_delta, settings.privacy_accountant)
    task = LocalTask(
        settings=settings,
        data=data,
        model=model,
        device=device,
        server_round=server_round,
        seed=derive_seed(settings.seed, pid, server_round),
        ledger=store,
        state=_load_state(context),
        partition_id=pid,
        state_dir=path.parent if path is not None else None,
    )
    result = get_mode(settings.privacy_mode)(task)
    _save_state(context, task.state)
    return train_reply(msg, result, settings, pid)


def train_reply(msg: Message, result: LocalResult, settings: RunSettings, pid: int) -> Message:
    """The reply to train message ``msg``: metrics, status, weights and any release.

    The weights sent are the trained ones, or, for a client simulated as unreliable
    (``participants``), what :func:`tasks.unreliable.corrupt_reply` makes of them; the
    functional mechanism's noisy objectives travel beside them (its epsilon-DP release
    itself, so sending them is no new spend). A client that declined (budget spent) sends
    no weights. In-process benchmarks build their replies with this function too.
    """
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: result.num_examples,
            keys.PARTITION_ID: pid,
            keys.TRAIN_LOSS: float(result.train_loss),
            keys.EPSILON: _finite(result.epsilon),
            keys.DELTA: settings.privacy_delta,
            keys.DECLINED: int(result.weights is None),
            keys.TRAIN_SECONDS: result.seconds,
        }
    )
    status = ConfigRecord(
        {
            keys.STATE: keys.TRAINED if result.weights is not None else keys.DECLINED_BUDGET,
            keys.REASON: result.reason,
        }
    )
    content = RecordDict({keys.METRICS: metrics, keys.STATUS: status})
    if result.weights is not None:
        global_weights = from_record(msg.content.array_records[keys.ARRAYS])
        sent = corrupt_reply(result.weights, global_weights, settings, pid)
        content[keys.ARRAYS] = to_record(sent)
        if result.release is not None:  # functional mechanism: the epsilon-DP release itself
            content[keys.FM_OBJECTIVES] = to_record(result.release)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the client's validation split."""
    settings = RunSettings.from_run_config(context.run_config)
    pid, num = _identity(context, settings)
    data = _client_data(context, settings, pid, num)
    device = select_device(settings.device)
    model = _model(settings, data, msg).to(device)
    loss, acc = evaluate(model, data.x_val, data.y_val, device)
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(data.y_val),
            keys.PARTITION_ID: pid,
            keys.VAL_LOSS: float(loss) if len(data.y_val) else 0.0,
            keys.VAL_ACCURACY: float(acc) if len(data.y_val) else 0.0,
        }
    )
    return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)
