"""Flower ClientApp: a thin adapter from Flower messages to ``tasks`` and ``privacy``."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from privacy import derive_seed
from privacy.dpsgd import DpSgdPlan
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.local import LocalTask, get_mode
from tasks.models import ModelSpec, build_model, set_weights
from tasks.partition import ClientData, load_client_data, specs_from_settings
from tasks.training import evaluate, select_device
from tasks.unreliable import corrupt_data, corrupt_reply

from .ledger_store import LedgerStore, ledger_path

app = ClientApp()
log = logging.getLogger("fedpriv.client")

PLAN_KEY = "fedpriv-plan"


def _load_plans(context: Context) -> dict[str, DpSgdPlan]:
    """The client's calibrated plan, kept in the node state so it is computed once per run."""
    record = context.state.config_records.get(PLAN_KEY)
    if record is None:
        return {}
    return {name: DpSgdPlan(**json.loads(str(text))) for name, text in record.items()}


def _save_plans(context: Context, plans: dict[str, DpSgdPlan]) -> None:
    if plans:
        context.state.config_records[PLAN_KEY] = ConfigRecord(
            {name: json.dumps(dataclasses.asdict(plan)) for name, plan in plans.items()}
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
def _client_data(settings: RunSettings, partition_id: int, num_partitions: int) -> ClientData:
    dspec, pspec = specs_from_settings(settings, num_partitions)
    data = load_client_data(dspec, pspec, partition_id, settings.val_fraction)
    return corrupt_data(data, settings, partition_id)  # simulated unreliable participants


def _model(settings: RunSettings, data: ClientData, msg: Message) -> torch.nn.Module:
    model = build_model(
        ModelSpec(settings.model_name, data.input_shape, data.num_classes, settings.model_hidden)
    )
    set_weights(model, from_record(msg.content.array_records[keys.ARRAYS]))
    return model


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("inf")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data under the configured privacy mode."""
    settings = RunSettings.from_run_config(context.run_config)
    pid, num = _identity(context, settings)
    data = _client_data(settings, pid, num)
    device = select_device(settings.device)
    model = _model(settings, data, msg).to(device)
    server_round = int(str(msg.content.config_records[keys.CONFIG][keys.SERVER_ROUND]))
    store = LedgerStore(
        context,
        ledger_path(dict(context.node_config), settings.output_dir, pid),
        settings.privacy_delta,
        settings.privacy_accountant,
    )
    task = LocalTask(
        settings=settings,
        data=data,
        model=model,
        device=device,
        server_round=server_round,
        seed=derive_seed(settings.seed, pid, server_round),
        ledger=store,
        plan_cache=_load_plans(context),
    )
    result = get_mode(settings.privacy_mode)(task)
    _save_plans(context, task.plan_cache)
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
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the client's validation split."""
    settings = RunSettings.from_run_config(context.run_config)
    pid, num = _identity(context, settings)
    data = _client_data(settings, pid, num)
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
