"""Flower ClientApp: a thin adapter from Flower messages to ``tasks`` and ``privacy``.

What a reply may carry is decided here, field by field (``docs/privacy.md`` has the table):
the mechanism's outputs (DP-SGD weights, the functional mechanism's noisy objectives, a noisy
validation accuracy), post-processing of them, and public facts (the example count ``n``,
public under the replace-one relation; the ledger's epsilon; the partition id; training time
in whole seconds). Nothing else computed from private data leaves: no raw loss or accuracy
under a DP mode, and no exception text (an error reply says only that the client failed;
the details go to the node's own log).

The lower layers take explicit parameters, not the run's settings: each is converted here,
once per use (:class:`tasks.training.TrainConfig`, :class:`tasks.training.EvalConfig`,
:class:`tasks.participants.ParticipantsConfig`, the dataset's
:class:`tasks.data.DatasetSpec`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from privacy import derive_seed
from privacy.laplace import make_source
from privacy.ledger_file import LedgerLostError
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.data import ClientData, load_client_data, load_node_data, specs_from_settings, task_shape
from tasks.models import build_model, model_spec, set_weights
from tasks.participants import ParticipantsConfig, corrupt_data, corrupt_reply
from tasks.training import (
    EvalConfig,
    EvalResult,
    LocalResult,
    LocalTask,
    TrainConfig,
    evaluate_private,
    select_device,
    trainer_for,
)
from tasks.training.personal import PersonalConfig

from .ledger_store import LedgerStore, ledger_path
from .personal import keep_personal_model, personal_dir
from .policy import NodePolicy

app = ClientApp()
log = logging.getLogger("fedpriv.client")

STATE_KEY = "fedpriv-client-state"

Handler = Callable[[Message, Context], Message]


class ClientFailedError(RuntimeError):
    """What the server learns of a failure: that it happened, not its text or data."""


def sanitised(what: str) -> Callable[[Handler], Handler]:
    """Log a handler's exception on the node only; raise a text-free one for the server.

    Flower turns an exception in a ClientApp into an error reply carrying ``str(exc)``, and
    exception texts can hold data values or row numbers (a bad value in the node's file,
    a shape). The server sees only ``ClientFailedError`` with a fixed message.
    """

    def deco(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def wrapper(msg: Message, context: Context) -> Message:
            try:
                return fn(msg, context)
            except Exception:
                log.exception("fedpriv %s failed on this node (kept local)", what)
                raise ClientFailedError(
                    f"fedpriv client failed in {what}; the details are in the node's log"
                ) from None

        return wrapper

    return deco


def quantised_seconds(seconds: float) -> float:
    """Training time in whole seconds (a coarse public timing; see ``docs/privacy.md``)."""
    return float(round(seconds)) if math.isfinite(seconds) else 0.0


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
    participants = ParticipantsConfig.from_settings(settings)
    return corrupt_data(data, participants, partition_id)  # simulated unreliable participants


def _client_data(context: Context, settings: RunSettings, pid: int, num: int) -> ClientData:
    """The node's own file (node config ``data-path``, deployment) or its simulated partition."""
    data_path = context.node_config.get("data-path")
    if data_path:
        return load_node_data(
            str(data_path),
            task_shape(specs_from_settings(settings)[0]),
            settings.val_fraction,
            settings.seed,
            pid,
        )
    return _partition_data(settings, pid, num)


def _model(settings: RunSettings, data: ClientData, msg: Message) -> torch.nn.Module:
    model = build_model(model_spec(settings, data.input_shape, data.num_classes), settings.seed)
    set_weights(model, from_record(msg.content.array_records[keys.ARRAYS]))
    return model


def _finite(x: float) -> float:
    """Epsilon as sent: finite, or +inf (no privacy, or unknown because the ledger is lost)."""
    return float(x) if math.isfinite(x) else float("inf")


def _settings(context: Context) -> tuple[RunSettings, NodePolicy]:
    """The run's settings as this node will apply them, and the node's own policy."""
    settings = RunSettings.from_run_config(context.run_config)
    policy = NodePolicy.from_node_config(dict(context.node_config))
    if policy.owned:  # a real participant never plays a simulated unreliable one
        settings = dataclasses.replace(settings, participants_unreliable_fraction=0.0)
    return settings, policy


def _declined(reason: str, n: int, epsilon: float) -> LocalResult:
    return LocalResult(None, n, math.nan, epsilon, reason)


def _spent(store: LedgerStore) -> float:
    """The ledger's epsilon for a refusal's reply (0 when there is none yet, NaN if lost)."""
    try:
        return store.load().epsilon()
    except (LedgerLostError, ValueError, OSError):
        return math.nan


@app.train()
@sanitised("train")
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data under the configured privacy mode.

    The node's policy (:class:`fl_client.policy.NodePolicy`) is checked first; a run it does
    not allow is declined before any data is touched by a mechanism. The ledger's lock is
    held from the budget check through the save, so two runs on one node cannot both spend
    what only one may.
    """
    settings, policy = _settings(context)
    pid, num = _identity(context, settings)
    data = _client_data(context, settings, pid, num)
    path = ledger_path(dict(context.node_config), settings.output_dir, pid)
    store = LedgerStore(
        context, path, settings.privacy_delta, settings.privacy_accountant, policy.strict_ledger
    )
    refusal = policy.refuse_train(settings, len(data.y_train))
    if refusal:
        eps = _spent(store)
        return train_reply(msg, _declined(refusal, len(data.y_train), eps), settings, pid)
    device = select_device(settings.device)
    model = _model(settings, data, msg).to(device)
    with store.exclusive():
        try:
            store.load()
        except LedgerLostError as err:
            log.error("%s", err)
            reason = "declined: the node's privacy ledger is missing or lost events (see its log)"
            return train_reply(msg, _declined(reason, len(data.y_train), math.nan), settings, pid)
        result = _train_locked(msg, context, settings, policy, data, model, device, store, pid)
    return train_reply(msg, result, settings, pid)


def _train_locked(
    msg: Message,
    context: Context,
    settings: RunSettings,
    policy: NodePolicy,
    data: ClientData,
    model: torch.nn.Module,
    device: torch.device,
    store: LedgerStore,
    pid: int,
) -> LocalResult:
    server_round = int(str(msg.content.config_records[keys.CONFIG][keys.SERVER_ROUND]))
    path = store.path
    config = TrainConfig.from_settings(settings)
    task = LocalTask(
        config=config,
        data=data,
        model=model,
        device=device,
        server_round=server_round,
        seed=derive_seed(settings.seed, pid, server_round),
        ledger=store,
        state=_load_state(context),
        partition_id=pid,
        state_dir=path.parent if path is not None else None,
        budget=policy.budget(settings),
    )
    result = trainer_for(config.mode)(task)
    _save_state(context, task.state)
    return result


def train_reply(msg: Message, result: LocalResult, settings: RunSettings, pid: int) -> Message:
    """The reply to train message ``msg``: metrics, status, weights and any release.

    The weights sent are the trained ones, or, for a client simulated as unreliable
    (``participants``), what :func:`tasks.participants.unreliable.corrupt_reply` makes of them; the
    functional mechanism's noisy objectives travel beside them (its epsilon-DP release
    itself, so sending them is no new spend). A client that declined (budget spent) sends
    no weights. In-process benchmarks build their replies with this function too.
    """
    values: dict[str, int | float | list[int] | list[float]] = {
        keys.NUM_EXAMPLES: result.num_examples,
        keys.PARTITION_ID: pid,
        keys.EPSILON: _finite(result.epsilon),
        keys.DELTA: settings.privacy_delta,
        keys.DECLINED: int(result.weights is None),
        keys.TRAIN_SECONDS: quantised_seconds(result.seconds),
    }
    if math.isfinite(result.train_loss):  # raw: set by privacy.mode=none only
        values[keys.TRAIN_LOSS] = float(result.train_loss)
    if math.isfinite(result.train_loss_dp):  # post-processing of a mechanism's release
        values[keys.TRAIN_LOSS_DP] = float(result.train_loss_dp)
    metrics = MetricRecord(values)
    status = ConfigRecord(
        {
            keys.STATE: keys.TRAINED if result.weights is not None else keys.DECLINED_BUDGET,
            keys.REASON: result.reason,
        }
    )
    content = RecordDict({keys.METRICS: metrics, keys.STATUS: status})
    if result.weights is not None:
        global_weights = from_record(msg.content.array_records[keys.ARRAYS])
        participants = ParticipantsConfig.from_settings(settings)
        sent = corrupt_reply(result.weights, global_weights, participants, pid)
        content[keys.ARRAYS] = to_record(sent)
        if result.release is not None:  # functional mechanism: the epsilon-DP release itself
            content[keys.FM_OBJECTIVES] = to_record(result.release)
    return Message(content=content, reply_to=msg)


@app.evaluate()
@sanitised("evaluate")
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the client's validation split.

    Under a DP mode the reply carries a noisy accuracy (``val-accuracy-dp``) accounted in the
    ledger, or nothing but a refusal when ``privacy.eval_epsilon`` is 0
    (:func:`tasks.training.evaluate_private`); raw metrics under ``privacy.mode=none`` only.
    """
    settings, policy = _settings(context)
    pid, num = _identity(context, settings)
    data = _client_data(context, settings, pid, num)
    refusal = policy.refuse_evaluate(settings) or (
        policy.refuse_train(settings, len(data.y_train)) if policy.owned else ""
    )
    if refusal:
        return evaluate_reply(msg, EvalResult(len(data.y_val), declined=True, reason=refusal), pid)
    device = select_device(settings.device)
    model = _model(settings, data, msg).to(device)
    server_round = int(str(msg.content.config_records[keys.CONFIG][keys.SERVER_ROUND]))
    path = ledger_path(dict(context.node_config), settings.output_dir, pid)
    store = LedgerStore(
        context, path, settings.privacy_delta, settings.privacy_accountant, policy.strict_ledger
    )
    source = make_source(
        derive_seed(settings.seed, pid, server_round, 0xE7A1),
        reproducible=settings.privacy_reproducible_noise,
    )
    with store.exclusive():
        try:
            result = evaluate_private(
                EvalConfig.from_settings(settings),
                model,
                data.x_val,
                data.y_val,
                device,
                store,
                server_round,
                source,
                budget=policy.budget(settings),
            )
        except LedgerLostError as err:
            log.error("%s", err)
            reason = "declined: the node's privacy ledger is missing or lost events (see its log)"
            result = EvalResult(len(data.y_val), declined=True, reason=reason)
    return evaluate_reply(msg, result, pid)


def evaluate_reply(msg: Message, result: EvalResult, pid: int) -> Message:
    """The reply to evaluate message ``msg``: only the fields ``result`` may release."""
    values: dict[str, int | float | list[int] | list[float]] = {
        keys.NUM_EXAMPLES: result.num_examples,
        keys.PARTITION_ID: pid,
        keys.DECLINED: int(result.declined),
        keys.EPSILON: _finite(result.epsilon),
    }
    for key, value in (
        (keys.VAL_LOSS, result.loss),
        (keys.VAL_ACCURACY, result.accuracy),
        (keys.VAL_ACCURACY_DP, result.accuracy_dp),
        (keys.VAL_LOSS_DP, result.loss_dp),
    ):
        if math.isfinite(value):
            values[key] = float(value)
    status = ConfigRecord({keys.REASON: result.reason})
    content = RecordDict({keys.METRICS: MetricRecord(values), keys.STATUS: status})
    return Message(content=content, reply_to=msg)


@app.query(keys.PERSONALISE.split(".", 1)[1])
@sanitised("personalise")
def personalise_on_node(msg: Message, context: Context) -> Message:
    """Fine-tune the final global model on this node's data and keep it here (a deployment).

    :mod:`fl_client.personal` writes the personal model and its held-out accuracy into the
    node's personal directory; the reply carries only the status ``personalised`` (nothing
    computed from the data, so nothing for the ledger).
    """
    settings, _ = _settings(context)
    pid, num = _identity(context, settings)
    out = personal_dir(dict(context.node_config))
    data = _client_data(context, settings, pid, num)
    device = select_device(settings.device)
    model = _model(settings, data, msg).to(device)
    config = PersonalConfig.from_settings(settings)
    path = keep_personal_model(model, data, config, device, pid, out, int(msg.metadata.run_id))
    log.info("fedpriv personal model of partition %d kept in %s", pid, path.parent)
    status = ConfigRecord({keys.STATE: keys.PERSONALISED, keys.REASON: ""})
    return Message(content=RecordDict({keys.STATUS: status}), reply_to=msg)
