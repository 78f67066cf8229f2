"""Reliability scorer vs robust baselines under simulated unreliable participants, one script.

For every (seed, unreliable fraction, kind, partitioner, strategy) it runs a federation of
DP-SGD clients and reports the final test accuracy (mean over seeds), plus the scorers'
detection AUCs against the ground truth of who was made unreliable: of the final reputation,
and of each client's mean aggregation weight over the rounds. An oracle row (FedAvg over the
honest clients alone) shows what is reachable once the unreliable clients' data is lost.

The rounds run in this process through the project's real code: the same client data path
(partitioners, simulated corruption), the same local DP-SGD mode and ledger, real Flower reply
messages, and the same strategies (``fl_server.registry``) the ServerApp uses; only Flower's
transport (SuperLink, SuperNodes) is left out, which changes no number here but makes a grid
of dozens of federations fit on two cores. By default it uses an MNIST subset so that every
client holds a few hundred examples.

    .venv/bin/python bench/robust_aggregation.py --jobs 2   # the full grid, 3 seeds (330 runs)
    .venv/bin/python bench/robust_aggregation.py --seeds 0 --fractions 0 0.3 \
        --kinds label_flip --partitioners iid   # one corner of it
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pandas as pd
import torch
from _inprocess import run_rounds  # bench/_inprocess.py (this script's folder is on sys.path)
from flwr.supercore.task_identity import TaskIdentity
from sklearn.metrics import roc_auc_score

from fl_server.app import ServerUpdate
from fl_server.registry import make_strategy
from protocol.settings import RunSettings
from tasks.data import (
    DataBundle,
    DatasetSpec,
    load_client_data,
    load_dataset,
    register_dataset,
    specs_from_settings,
)
from tasks.models import ModelSpec, build_model, get_weights, set_weights
from tasks.participants import ParticipantsConfig, corrupt_data, unreliable_clients
from tasks.training import LocalResult, evaluate

POOL = {"n": 8000}


@register_dataset("mnist_subset")
def _mnist_subset(spec: DatasetSpec) -> DataBundle:
    """The first ``POOL['n']`` MNIST training images and all 10,000 official test images."""
    full = load_dataset(DatasetSpec("mnist", spec.seed))
    n = POOL["n"]
    return dataclasses.replace(
        full,
        name="mnist_subset",
        x_train=full.x_train[:n],
        y_train=full.y_train[:n],
    )


def federation(settings: RunSettings, honest_only: bool = False) -> dict:
    """Run one federation in process; returns final accuracy and detection AUCs.

    ``honest_only`` is the oracle reference: the replies of the clients made unreliable are
    dropped before aggregation (what a perfect detector would do), so the table shows what
    is reachable at all once their data is lost.

    Two AUCs (reliable = positive class): of the final round's reputation, and of each
    client's mean aggregation weight over all rounds (who was actually down-weighted).
    """
    dspec, pspec = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    spec = ModelSpec(
        settings.model_name, bundle.input_shape, bundle.num_classes, settings.model_hidden
    )
    model = build_model(spec, settings.seed)
    server_update = (
        ServerUpdate(settings, bundle) if settings.aggregation_server_data_size else None
    )
    strategy = make_strategy(settings, server_update)
    participants = ParticipantsConfig.from_settings(settings)
    data = {
        pid: corrupt_data(
            load_client_data(dspec, pspec, pid, settings.val_fraction), participants, pid
        )
        for pid in range(settings.num_clients)
    }
    bad = set(unreliable_clients(participants))

    def trained(rnd: int, pid: int, out: LocalResult, wall: float) -> None:
        if out.weights is None:  # the budget is sized for the run: a decline is a bug here
            raise RuntimeError(f"client {pid} declined in round {rnd}: {out.reason}")

    g = run_rounds(
        settings,
        spec,
        data,
        strategy,
        get_weights(model),
        observe=trained,
        keep=lambda pid: not (honest_only and pid in bad),
    )
    set_weights(model, g)
    _, acc = evaluate(model, bundle.x_test, bundle.y_test, torch.device("cpu"))
    auc, auc_weight = float("nan"), float("nan")
    outcomes = strategy.rounds[settings.num_rounds].outcomes
    reps = {o.partition_id: o.reputation for o in outcomes}
    if 0 < len(bad) < settings.num_clients and all(np.isfinite(list(reps.values()))):
        labels = [pid not in bad for pid in reps]
        auc = float(roc_auc_score(labels, list(reps.values())))
        weights: dict[int, list[float]] = {}
        for r in range(1, settings.num_rounds + 1):
            for o in strategy.rounds[r].outcomes:
                weights.setdefault(o.partition_id, []).append(o.weight)
        mean_w = {pid: float(np.mean(w)) for pid, w in weights.items()}
        if all(np.isfinite(list(mean_w.values()))) and len(set(mean_w.values())) > 1:
            auc_weight = float(roc_auc_score([p not in bad for p in mean_w], list(mean_w.values())))
    return {"test_accuracy": acc, "detection_auc": auc, "weight_auc": auc_weight}


def _timed(settings: RunSettings, honest_only: bool) -> dict:
    """:func:`federation` plus its wall time (a worker process runs one at a time)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    return {**federation(settings, honest_only), "seconds": time.perf_counter() - t0}


ORACLE = "oracle(fedavg, honest only)"
"""Reference row: FedAvg over the honest clients' replies alone (see :func:`federation`)."""


EXCLUDE = {"aggregation_relative_threshold": 0.5, "aggregation_by_reputation": False}
"""As ``conf/aggregation/output_agreement.yaml``: below half the median reputation excluded,
the rest averaged by example counts."""

DEFAULT_STRATEGIES = [
    "scorer(fltrust)",
    "scorer(fltrust,0.5)",
    "scorer(output)",
    "fedavg",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "oracle(fedavg, honest only)",
]

STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {
    "scorer(fltrust)": {  # conf/aggregation/fltrust.yaml: below a quarter of the median excluded
        "aggregation_strategy": "scorer",
        "aggregation_scorer": "fltrust",
        "aggregation_relative_threshold": 0.25,
        "aggregation_by_reputation": False,
    },
    "scorer(fltrust,0.5)": {  # the stricter exclusion, below half the median
        "aggregation_strategy": "scorer",
        "aggregation_scorer": "fltrust",
        **EXCLUDE,
    },
    "scorer(fltrust,decay0.8)": {  # longer memory: reputation averages about 5 rounds
        "aggregation_strategy": "scorer",
        "aggregation_scorer": "fltrust",
        "aggregation_relative_threshold": 0.25,
        "aggregation_by_reputation": False,
        "aggregation_decay": 0.8,
    },
    "scorer(fltrust,0.5,decay0.8)": {
        "aggregation_strategy": "scorer",
        "aggregation_scorer": "fltrust",
        **EXCLUDE,
        "aggregation_decay": 0.8,
    },
    "scorer(output)": {
        "aggregation_strategy": "scorer",
        "aggregation_scorer": "output_agreement",
        **EXCLUDE,
    },
    "scorer(fltrust,weighted)": {  # FLTrust's own rule: weights proportional to ReLU(cos)
        "aggregation_strategy": "scorer",
        "aggregation_scorer": "fltrust",
        "aggregation_relative_threshold": 0.0,
        "aggregation_by_reputation": True,
    },
    "scorer(median)": {"aggregation_strategy": "scorer", "aggregation_scorer": "median_agreement"},
    "fedavg": {"aggregation_strategy": "fedavg"},
    ORACLE: {"aggregation_strategy": "fedavg"},
    "fedmedian": {"aggregation_strategy": "fedmedian"},
    "fedtrimmedavg": {"aggregation_strategy": "fedtrimmedavg"},
    "krum": {"aggregation_strategy": "krum"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=4.0)
    ap.add_argument("--pool", type=int, default=8000, help="MNIST training images used")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="grid per seed")
    ap.add_argument("--kinds", nargs="+", default=["label_flip", "feature_noise"])
    ap.add_argument("--partitioners", nargs="+", default=["iid", "dirichlet"])
    ap.add_argument(
        "--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=list(STRATEGY_SETTINGS)
    )
    ap.add_argument("--out", default="bench-reliability.csv")
    ap.add_argument("--jobs", type=int, default=1, help="federations run at once (processes)")
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
        aggregation_server_data_size=100,
        aggregation_num_malicious=int(0.3 * args.clients),
    )
    grid = list(
        itertools.product(
            args.seeds, args.partitioners, args.kinds, args.fractions, args.strategies
        )
    )
    grid = [g for g in grid if not (g[3] == 0 and g[2] != args.kinds[0])]  # clean runs once
    grid = [g for g in grid if not (g[3] == 0 and g[4] == ORACLE)]  # the oracle is FedAvg
    cells = [
        dataclasses.replace(
            base,
            seed=seed,
            partitioner=part,
            participants_kind=kind,
            participants_unreliable_fraction=frac,
            **STRATEGY_SETTINGS[name],
        ).validate()
        for seed, part, kind, frac, name in grid
    ]
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    # fork: workers inherit the registered mnist_subset dataset and POOL; one thread each
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {
            pool.submit(_timed, settings, key[4] == ORACLE): key
            for key, settings in zip(grid, cells, strict=True)
        }
        for i, future in enumerate(as_completed(futures), 1):
            seed, part, kind, frac, name = futures[future]
            res = future.result()
            rows.append(
                {
                    "seed": seed,
                    "partitioner": part,
                    "kind": kind if frac > 0 else "none",
                    "unreliable": frac,
                    "strategy": name,
                    **res,
                }
            )
            done = time.perf_counter() - start
            print(
                f"[{i}/{len(grid)}] seed {seed} {part} {rows[-1]['kind']} {frac:g} {name}: "
                f"acc {res['test_accuracy']:.4f} auc {res['detection_auc']:.3f} "
                f"({res['seconds']:.0f} s; ~{done / i * (len(grid) - i) / 60:.0f} min left)",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out, index=False)  # nothing lost on a crash
    table = pd.DataFrame(rows)
    acc = table.pivot_table(
        index=["partitioner", "kind", "unreliable"], columns="strategy", values="test_accuracy"
    )
    print(
        f"\nMNIST subset ({args.pool} images), {args.clients} clients, DP-SGD epsilon "
        f"{args.epsilon:g} per client, {args.rounds} rounds: final test accuracy on the "
        f"10,000 test images, mean over seeds {args.seeds}"
    )
    print(acc.to_string(float_format=lambda v: f"{v:.4f}"))
    auc = table[table["unreliable"] > 0].pivot_table(
        index=["partitioner", "kind", "unreliable"], columns="strategy", values="detection_auc"
    )
    print("\ndetection AUC (final reputation vs ground truth; scorers only)")
    print(auc.dropna(axis=1, how="all").to_string(float_format=lambda v: f"{v:.3f}"))
    wauc = table[table["unreliable"] > 0].pivot_table(
        index=["partitioner", "kind", "unreliable"], columns="strategy", values="weight_auc"
    )
    print("\ndetection AUC (mean aggregation weight over the rounds vs ground truth)")
    print(wauc.dropna(axis=1, how="all").to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nrows in {args.out}")


if __name__ == "__main__":
    main()
