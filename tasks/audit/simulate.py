"""The federation an audit attacks, run in process with the project's own trainers.

Every round each client trains through its privacy mode's trainer
(:func:`tasks.training.trainer_for`, the function the ClientApp calls, with a ledger and node
state kept across rounds, seeded per client and round as the ClientApp seeds it); the server
combines the replies with the aggregation rule of what the mode releases
(:attr:`privacy.PrivacyMode.release`, the key the ServerApp's strategy registry
``fl_server.registry.RELEASES`` reads): FedAvg of the weights (``weights``; the rule of
``fl_server.weighted.WeightedFedAvg`` with example weights), or, for the functional mechanism
with ``privacy.functional_aggregation=objective``, FedAvg of the other weights and a head that
minimises the sum of the clients' released noisy objectives (``objective``; the rule of
``fl_server.objective.ObjectiveFedAvg``, through the same head kind's
:meth:`privacy.functional.HeadKind.solve`). ``experiments.audit`` passes the server's own head
kind and noise scale (``fl_server.objective.model_head_kind`` and ``noise_scale_of``).

Flower's transport is left out, and so are the ServerApp's reply checks and the other
strategies: this attacks the clients' releases exactly as trained and combined, not a run of
``experiments.run``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from privacy import derive_seed
from privacy.functional import HeadKind
from tasks.data.partition import ClientData
from tasks.models.functional import FUNCTIONAL_HEAD
from tasks.models.registry import ModelSpec, build_model, get_weights, set_weights
from tasks.training import LocalResult, LocalTask, MemoryLedgerStore, TrainConfig, trainer_for
from tasks.training.local import Trainer

Weights = dict[str, np.ndarray]
NoiseScale = Callable[[int, int], float]
"""``(dim, outputs) -> b``: the public noise scale of every client's release (Laplace units)."""


@dataclass(frozen=True)
class Reply:
    """One client's usable reply: its example count, its weights and its release (if any)."""

    num_examples: int
    weights: Weights
    release: Weights | None = None


Aggregator = Callable[[Weights, Sequence[Reply]], Weights]
"""``(global weights sent, usable replies) -> new global weights``."""


def fedavg(reference: Weights, replies: Sequence[Reply]) -> Weights:
    """``g + sum_i a_i (w_i - g)`` with ``a_i = n_i / N``: ``WeightedFedAvg``'s FedAvg rule."""
    n = np.array([r.num_examples for r in replies], dtype=np.float64)
    a = n / n.sum() if n.sum() > 0 else n
    return {
        k: (
            ref + np.sum([ai * (r.weights[k] - ref) for ai, r in zip(a, replies, strict=True)], 0)
        ).astype(ref.dtype, copy=False)
        for k, ref in reference.items()
    }


def objective_sum(kind: HeadKind, noise_scale: NoiseScale) -> Aggregator:
    """``ObjectiveFedAvg``'s rule: FedAvg, then the head of the summed released objectives.

    With FedAvg's example weights ``a_i = n_i / N`` every client's objective counts
    ``a_i N / n_i = 1`` times: the plain sum, the objective of the union of the clients' data,
    minimised once by ``kind.solve`` with the ridge of the summed noise (``noise_scale``).
    """

    def aggregate(reference: Weights, replies: Sequence[Reply]) -> Weights:
        if FUNCTIONAL_HEAD not in reference:
            raise ValueError(
                "privacy.functional_aggregation='objective' needs a functional model with "
                f"'{FUNCTIONAL_HEAD}', got weights {sorted(reference)}"
            )
        releases = [r.release for r in replies if r.release is not None]
        if len(releases) != len(replies):
            raise ValueError("privacy.functional_aggregation='objective': a reply has no release")
        head = reference[FUNCTIONAL_HEAD]
        outputs, dim = head.shape
        result = fedavg(reference, replies)
        n = np.array([r.num_examples for r in replies], dtype=np.float64)
        a = n / n.sum()
        solved = kind.solve(releases, noise_scale(dim, outputs), a * n.sum() / n)
        result[FUNCTIONAL_HEAD] = solved.astype(head.dtype, copy=False)
        return result

    return aggregate


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
    aggregate : callable
        The server's rule: :func:`fedavg`, or :func:`objective_sum` when
        ``config.release == "objective"`` (:func:`check_aggregator` refuses FedAvg there).
    trainers : mapping
        Partition ids whose local training is not their mode's trainer: the audit's own
        (:func:`tasks.audit.gradient.dirac_dpsgd`, the audited client's DP-SGD with gradient
        canaries). Empty: every client trains as the ClientApp does.
    """

    config: TrainConfig
    spec: ModelSpec
    seed: int
    audited: int = 0
    aggregate: Aggregator = fedavg
    trainers: Mapping[int, Trainer] = field(default_factory=dict)


def check_aggregator(fed: AuditFederation) -> None:
    """A release of noisy objectives must be combined as objectives, not by FedAvg."""
    if fed.config.release == "objective" and fed.aggregate is fedavg:
        raise ValueError(
            "privacy.functional_aggregation='objective': the audit's server must minimise the "
            "summed released objectives (tasks.audit.simulate.objective_sum), got fedavg"
        )


@dataclass
class Releases:
    """What the server saw: the weights it sent each round and the audited client's replies."""

    global_weights: list[Weights] = field(default_factory=list)
    client_weights: list[Weights | None] = field(default_factory=list)
    client_releases: list[Weights | None] = field(default_factory=list)
    """The audited client's released arrays beside its weights (functional objectives)."""
    others: list[list[Weights | None]] = field(default_factory=list)
    """Each round, the other clients' replies in partition order (None: declined)."""
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
    return fed.trainers.get(pid, trainer_for(fed.config.mode))(task)


def run_federation(fed: AuditFederation, data: Mapping[int, ClientData]) -> Releases:
    """``fed.config.rounds`` rounds of local training and ``fed.aggregate``; what the server saw."""
    check_aggregator(fed)
    c = fed.config
    ledgers = {pid: MemoryLedgerStore(c.delta, c.accountant) for pid in data}
    states: dict[int, dict[str, Any]] = {pid: {} for pid in data}
    g = get_weights(build_model(fed.spec, fed.seed))
    out = Releases()
    for rnd in range(1, c.rounds + 1):
        out.global_weights.append(g)
        replies: list[Reply] = []
        out.others.append([])
        for pid, client in data.items():
            result = _train(fed, client, g, pid, rnd, ledgers[pid], states[pid])
            if pid == fed.audited:
                out.client_weights.append(result.weights)
                out.client_releases.append(result.release)
            else:
                out.others[-1].append(result.weights)
            if result.weights is not None:
                replies.append(Reply(result.num_examples, result.weights, result.release))
        if replies:
            g = fed.aggregate(g, replies)
    out.final = g
    out.epsilon = {pid: ledgers[pid].load().epsilon() for pid in data}
    return out


def replay_round(fed: AuditFederation, data: ClientData, start: Weights, rnd: int) -> LocalResult:
    """The audited client's round ``rnd`` from ``start`` on ``data``, with a fresh ledger/state.

    Under ``privacy.reproducible_noise`` every draw derives from the seed, so this gives the
    same noise and sampling as the real round (and, for the functional mechanism, the same
    noise on the release): the seed-knowing auditor's reference.
    """
    ledger = MemoryLedgerStore(fed.config.delta, fed.config.accountant)
    return _train(fed, data, start, fed.audited, rnd, ledger, {})
