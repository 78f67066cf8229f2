"""The federation an audit attacks, run in process with the project's own trainers.

Every round each client trains through its privacy mode's trainer
(:func:`tasks.training.trainer_for`, the function the ClientApp calls, with a ledger and node
state kept across rounds, seeded per client and round as the ClientApp seeds it); the server
combines the replies by FedAvg weighted by ``n``. Flower's transport is left out, and so are
the ServerApp's reply checks and other strategies: this is a first version that attacks the
clients' releases exactly as trained, not a run of ``experiments.run``. Under
``privacy=functional`` with ``privacy.functional_aggregation=objective`` the server would
minimise the summed objectives instead of averaging the weights; both are post-processing of
the same epsilon-DP releases, so the audit's bound concerns the same guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from privacy import derive_seed
from tasks.data.partition import ClientData
from tasks.models.registry import ModelSpec, build_model, get_weights, set_weights
from tasks.training import LocalResult, LocalTask, MemoryLedgerStore, TrainConfig, trainer_for

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class AuditFederation:
    """The federation's explicit parameters.

    Attributes
    ----------
    config : TrainConfig
        The clients' training (:meth:`TrainConfig.from_settings`).
    spec : ModelSpec
        The model every client builds.
    seed : int
        ``seed``: model initialisation and the per-client, per-round seeds.
    audited : int
        The partition id whose replies the white-box attacker sees.
    """

    config: TrainConfig
    spec: ModelSpec
    seed: int
    audited: int = 0


@dataclass
class Releases:
    """What the server saw: the weights it sent each round and the audited client's replies."""

    global_weights: list[Weights] = field(default_factory=list)
    client_weights: list[Weights | None] = field(default_factory=list)
    final: Weights = field(default_factory=dict)
    epsilon: dict[int, float] = field(default_factory=dict)
    """Each client's ledger epsilon at the end (inf without privacy)."""


def _train(
    fed: AuditFederation,
    data: ClientData,
    start: Weights,
    pid: int,
    rnd: int,
    ledger: MemoryLedgerStore,
    state: dict[str, Any],
) -> LocalResult:
    model = build_model(fed.spec, fed.seed)
    set_weights(model, start)
    task = LocalTask(
        config=fed.config,
        data=data,
        model=model,
        device=torch.device("cpu"),
        server_round=rnd,
        seed=derive_seed(fed.seed, pid, rnd),
        ledger=ledger,
        state=state,
        partition_id=pid,
        state_dir=None,
    )
    return trainer_for(fed.config.mode)(task)


def run_federation(fed: AuditFederation, data: Mapping[int, ClientData]) -> Releases:
    """``fed.config.rounds`` rounds of local training and FedAvg; what the server saw."""
    c = fed.config
    ledgers = {pid: MemoryLedgerStore(c.delta, c.accountant) for pid in data}
    states: dict[int, dict[str, Any]] = {pid: {} for pid in data}
    g = get_weights(build_model(fed.spec, fed.seed))
    out = Releases()
    for rnd in range(1, c.rounds + 1):
        out.global_weights.append(g)
        replies: list[tuple[int, Weights]] = []
        for pid, client in data.items():
            result = _train(fed, client, g, pid, rnd, ledgers[pid], states[pid])
            if pid == fed.audited:
                out.client_weights.append(result.weights)
            if result.weights is not None:
                replies.append((result.num_examples, result.weights))
        if replies:
            total = sum(n for n, _ in replies)
            g = {
                k: (
                    np.sum([n * np.asarray(w[k], dtype=np.float64) for n, w in replies], axis=0)
                    / total
                ).astype(np.float32)
                for k in g
            }
    out.final = g
    out.epsilon = {pid: ledgers[pid].load().epsilon() for pid in data}
    return out


def replay_round(
    fed: AuditFederation, data: ClientData, start: Weights, rnd: int
) -> Weights | None:
    """The audited client's round ``rnd`` from ``start`` on ``data``, with a fresh ledger/state.

    Under ``privacy.reproducible_noise`` every draw derives from the seed, so this gives the
    same noise and sampling as the real round: the seed-knowing auditor's reference.
    """
    ledger = MemoryLedgerStore(fed.config.delta, fed.config.accountant)
    return _train(fed, data, start, fed.audited, rnd, ledger, {}).weights
