"""Reliability scorer vs robust baselines under simulated unreliable participants, one script.

For every (unreliable fraction, kind, partitioner, strategy) it runs a federation of DP-SGD
clients and reports the final test accuracy, plus the scorer's detection AUC (final reputation
as the score of being reliable, against the ground truth of who was made unreliable).

The rounds run in this process through the project's real code: the same client data path
(partitioners, simulated corruption), the same local DP-SGD mode and ledger, real Flower reply
messages, and the same strategies (``fl_server.strategies``) the ServerApp uses; only Flower's
transport (SuperLink, SuperNodes) is left out, which changes no number here but makes a grid
of dozens of federations fit on two cores. By default it uses an MNIST subset so that every
client holds a few hundred examples.

    .venv/bin/python bench/robust_aggregation.py           # the default grid
    .venv/bin/python bench/robust_aggregation.py --fractions 0 0.1 0.3 0.5 \
        --partitioners iid dirichlet
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from sklearn.metrics import roc_auc_score

from fl_server.app import ServerUpdate
from fl_server.strategies import make_strategy
from privacy import derive_seed
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.datasets import DataBundle, DatasetSpec, load_dataset, register_dataset
from tasks.local import LocalTask, MemoryLedgerStore, get_mode
from tasks.models import ModelSpec, build_model, get_weights, set_weights
from tasks.partition import load_client_data, specs_from_settings
from tasks.training import evaluate
from tasks.unreliable import corrupt_data, corrupt_reply, unreliable_clients

POOL = {"n": 8000}


@register_dataset("mnist_subset")
def _mnist_subset(spec: DatasetSpec) -> DataBundle:
    """The first ``POOL['n']`` MNIST training images and 2,000 test images."""
    full = load_dataset(DatasetSpec("mnist", spec.seed))
    n = POOL["n"]
    return dataclasses.replace(
        full,
        name="mnist_subset",
        x_train=full.x_train[:n],
        y_train=full.y_train[:n],
        x_test=full.x_test[:2000],
        y_test=full.y_test[:2000],
    )


def reply(node: int, server_round: int, weights: dict, n: int, pid: int, eps: float) -> Message:
    """A train reply exactly as the ClientApp builds it, answering the server's message."""
    incoming = Message(
        content=RecordDict({keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: n,
            keys.PARTITION_ID: pid,
            keys.TRAIN_LOSS: 0.0,
            keys.EPSILON: eps,
            keys.DECLINED: 0,
        }
    )
    content = RecordDict({keys.ARRAYS: to_record(weights), keys.METRICS: metrics})
    return Message(content=content, reply_to=incoming)


def federation(settings: RunSettings) -> dict:
    """Run one federation in process; returns final accuracy and detection AUC."""
    dspec, pspec = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    spec = ModelSpec(
        settings.model_name, bundle.input_shape, bundle.num_classes, settings.model_hidden
    )
    model = build_model(spec, settings.seed)
    server_update = (
        ServerUpdate(settings, bundle) if settings.reliability_server_data_size else None
    )
    strategy = make_strategy(settings, server_update)
    clients = range(settings.num_clients)
    data = {
        pid: corrupt_data(load_client_data(dspec, pspec, pid, settings.val_fraction), settings, pid)
        for pid in clients
    }
    ledgers = {pid: MemoryLedgerStore(settings.privacy_delta) for pid in clients}
    states: dict[int, dict] = {pid: {} for pid in clients}
    mode = get_mode(settings.privacy_mode)
    g = get_weights(model)
    for rnd in range(1, settings.num_rounds + 1):
        strategy.current = to_record(g)  # as configure_train does
        replies = []
        for pid in clients:
            local = build_model(spec, settings.seed)
            set_weights(local, g)
            task = LocalTask(
                settings=settings,
                data=data[pid],
                model=local,
                device=torch.device("cpu"),
                server_round=rnd,
                seed=derive_seed(settings.seed, pid, rnd),
                ledger=ledgers[pid],
                state=states[pid],
                partition_id=pid,
            )
            out = mode(task)
            assert out.weights is not None, out.reason
            sent = corrupt_reply(out.weights, g, settings, pid)
            replies.append(reply(pid + 1, rnd, sent, out.num_examples, pid, out.epsilon))
        arrays, _ = strategy.aggregate_train(rnd, replies)
        if arrays is not None:
            g = from_record(arrays)
    set_weights(model, g)
    _, acc = evaluate(model, bundle.x_test, bundle.y_test, torch.device("cpu"))
    bad = set(unreliable_clients(settings))
    auc = float("nan")
    outcomes = strategy.rounds[settings.num_rounds].outcomes
    reps = {o.partition_id: o.reputation for o in outcomes}
    if 0 < len(bad) < settings.num_clients and all(np.isfinite(list(reps.values()))):
        labels = [pid not in bad for pid in reps]
        auc = float(roc_auc_score(labels, list(reps.values())))
    return {"test_accuracy": acc, "detection_auc": auc}


EXCLUDE = {"reliability_relative_threshold": 0.5, "reliability_by_reputation": False}
"""As ``conf/reliability/fltrust.yaml`` and ``output_agreement.yaml``: below half the median
reputation excluded, the rest averaged by example counts."""

STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {
    "scorer(fltrust)": {
        "reliability_strategy": "scorer",
        "reliability_scorer": "fltrust",
        **EXCLUDE,
    },
    "scorer(output)": {
        "reliability_strategy": "scorer",
        "reliability_scorer": "output_agreement",
        **EXCLUDE,
    },
    "scorer(median)": {"reliability_strategy": "scorer", "reliability_scorer": "median_agreement"},
    "fedavg": {"reliability_strategy": "fedavg"},
    "fedmedian": {"reliability_strategy": "fedmedian"},
    "fedtrimmedavg": {"reliability_strategy": "fedtrimmedavg"},
    "krum": {"reliability_strategy": "krum"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epsilon", type=float, default=4.0)
    ap.add_argument("--pool", type=int, default=8000, help="MNIST training images used")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--kinds", nargs="+", default=["label_flip", "feature_noise"])
    ap.add_argument("--partitioners", nargs="+", default=["iid"])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGY_SETTINGS))
    ap.add_argument("--out", default="bench-reliability.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one federation per core; oversubscription only slows the grid
    POOL["n"] = args.pool
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0

    base = RunSettings(
        dataset_name="mnist_subset",
        model_name="mlp",
        privacy_mode="dpsgd",
        privacy_target_epsilon=args.epsilon,
        num_clients=args.clients,
        num_rounds=args.rounds,
        batch_size=32,
        learning_rate=0.5,
        dirichlet_alpha=0.3,
        reliability_server_data_size=100,
        reliability_num_malicious=int(0.3 * args.clients),
    )
    rows = []
    grid = list(itertools.product(args.partitioners, args.kinds, args.fractions, args.strategies))
    grid = [g for g in grid if not (g[2] == 0 and g[1] != args.kinds[0])]  # clean runs once
    start = time.perf_counter()
    for i, (part, kind, frac, name) in enumerate(grid, 1):
        settings = dataclasses.replace(
            base,
            partitioner=part,
            participants_kind=kind,
            participants_unreliable_fraction=frac,
            **STRATEGY_SETTINGS[name],
        ).validate()
        t0 = time.perf_counter()
        res = federation(settings)
        rows.append(
            {
                "partitioner": part,
                "kind": kind if frac > 0 else "none",
                "unreliable": frac,
                "strategy": name,
                **res,
                "seconds": time.perf_counter() - t0,
            }
        )
        done = time.perf_counter() - start
        print(
            f"[{i}/{len(grid)}] {part} {rows[-1]['kind']} {frac:g} {name}: "
            f"acc {res['test_accuracy']:.4f} auc {res['detection_auc']:.3f} "
            f"({rows[-1]['seconds']:.0f} s; ~{done / i * (len(grid) - i) / 60:.0f} min left)",
            flush=True,
        )
        pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows)
    acc = table.pivot_table(
        index=["partitioner", "kind", "unreliable"], columns="strategy", values="test_accuracy"
    )
    print(
        f"\nMNIST subset ({args.pool} images), {args.clients} clients, DP-SGD epsilon "
        f"{args.epsilon:g} per client, {args.rounds} rounds: final test accuracy"
    )
    print(acc.to_string(float_format=lambda v: f"{v:.4f}"))
    auc = table[table["unreliable"] > 0].pivot_table(
        index=["partitioner", "kind", "unreliable"], columns="strategy", values="detection_auc"
    )
    print("\ndetection AUC (final reputation vs ground truth; scorers only)")
    print(auc.dropna(axis=1, how="all").to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nrows in {args.out}")


if __name__ == "__main__":
    main()
