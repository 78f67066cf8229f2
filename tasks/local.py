"""Privacy modes of local training, chosen by ``privacy.mode`` through a registry.

A mode takes the global model and the client's data and returns trained weights plus the
client's cumulative epsilon, or declines when a round would take it past its budget. Modes
know nothing of Flower: the ClientApp hands them a :class:`LedgerStore` that persists the
client's privacy ledger wherever the node keeps it, and a JSON-able ``state`` dict that it
keeps in the node's state between rounds (the DP-SGD plan, the functional mechanism's noisy
objective).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from privacy import (
    PrivacyLedger,
    make_generator,
    make_private,
    plan_dpsgd,
    planned_round_event,
    would_exceed,
)
from privacy.dpsgd import DpSgdPlan
from protocol.settings import RunSettings
from tasks.models import get_weights
from tasks.partition import ClientData
from tasks.training import make_loader, train_epochs


class LedgerStore(Protocol):
    """Where a client's ledger is kept between rounds (node state, disk)."""

    def load(self) -> PrivacyLedger:
        """The ledger as last saved, or a new empty one."""
        ...

    def save(self, ledger: PrivacyLedger) -> None:
        """Persist the ledger so that a restart cannot lose it."""
        ...


class MemoryLedgerStore:
    """A :class:`LedgerStore` in memory, for tests and in-process benchmarks (not for nodes).

    ``load`` returns a copy, as a store on disk would; ``saves`` counts the saves.
    """

    def __init__(self, delta: float, accountant: str = "rdp") -> None:
        self.ledger = PrivacyLedger(delta=delta, accountant=accountant)
        self.saves = 0

    def load(self) -> PrivacyLedger:
        """A copy of the ledger as last saved."""
        return PrivacyLedger.from_json(self.ledger.to_json())

    def save(self, ledger: PrivacyLedger) -> None:
        """Keep ``ledger`` (in memory only)."""
        self.ledger = ledger
        self.saves += 1


@dataclass
class LocalTask:
    """Everything a mode needs for one round on one client.

    Attributes
    ----------
    state : dict
        The client's state across rounds, JSON-able values only; the ClientApp keeps it in
        the node's state (``context.state``). Modes read and write their own keys.
    partition_id : int
        The client's partition (seeds draws that must not depend on the round).
    state_dir : Path or None
        A directory on the node's disk, next to the ledger, for privacy state that a
        restart must not lose (None: node state only).
    """

    settings: RunSettings
    data: ClientData
    model: nn.Module
    device: torch.device
    server_round: int
    seed: int
    ledger: LedgerStore
    state: dict[str, Any]
    partition_id: int
    state_dir: Path | None = None


@dataclass
class LocalResult:
    """What a mode returns: weights (None when declined) and what to report."""

    weights: dict[str, np.ndarray] | None
    num_examples: int
    train_loss: float
    epsilon: float
    reason: str = ""
    seconds: float = 0.0
    release: dict[str, np.ndarray] | None = None
    """Functional mechanism with ``privacy.functional_aggregation=objective``: the released
    noisy objectives (:func:`privacy.functional.objectives_to_arrays`), sent beside the
    weights under ``protocol.keys.FM_OBJECTIVES``."""


Mode = Callable[[LocalTask], LocalResult]
MODES: dict[str, Mode] = {}


def register_mode(name: str) -> Callable[[Mode], Mode]:
    """Register a privacy mode under ``name`` (``privacy.mode`` in the config)."""

    def deco(fn: Mode) -> Mode:
        MODES[name] = fn
        return fn

    return deco


def get_mode(name: str) -> Mode:
    """The registered mode ``name``; ``ValueError`` lists the known ones."""
    if name not in MODES:
        raise ValueError(f"privacy.mode must be one of {sorted(MODES)}, got {name!r}")
    return MODES[name]


def _optimizer(task: LocalTask) -> torch.optim.Optimizer:
    return torch.optim.SGD(task.model.parameters(), lr=task.settings.learning_rate)


@register_mode("none")
def train_plain(task: LocalTask) -> LocalResult:
    """Plain SGD, no privacy: reports epsilon = inf."""
    gen = make_generator(task.seed)
    loader = make_loader(task.data.x_train, task.data.y_train, task.settings.batch_size, gen)
    start = time.perf_counter()
    stats = train_epochs(
        task.model, loader, _optimizer(task), task.settings.local_epochs, task.device
    )
    seconds = time.perf_counter() - start
    return LocalResult(
        get_weights(task.model), len(task.data.y_train), stats.loss, float("inf"), "", seconds
    )


def dpsgd_plan(task: LocalTask) -> DpSgdPlan:
    """The client's DP-SGD plan: noise calibrated once for the whole run, then reused."""
    if "plan" not in task.state:
        s = task.settings
        plan = plan_dpsgd(
            target_epsilon=s.privacy_target_epsilon,
            delta=s.privacy_delta,
            n_train=len(task.data.y_train),
            batch_size=s.batch_size,
            local_epochs=s.local_epochs,
            rounds=s.num_rounds,
            accountant=s.privacy_accountant,
        )
        task.state["plan"] = dataclasses.asdict(plan)
    return DpSgdPlan(**task.state["plan"])


@register_mode("dpsgd")
def train_dpsgd(task: LocalTask) -> LocalResult:
    """Opacus DP-SGD with a sample-level (epsilon, delta) budget over the whole run.

    The noise multiplier is calibrated once (for every round the client may take part in);
    each round's sampled-Gaussian event is appended to the client's persistent ledger, and a
    round that would take the ledger past ``privacy.target_epsilon`` is declined, not run.
    """
    s = task.settings
    plan = dpsgd_plan(task)
    ledger = task.ledger.load()
    n = len(task.data.y_train)
    if would_exceed(ledger, planned_round_event(plan, task.server_round), s.privacy_target_epsilon):
        return LocalResult(
            None,
            n,
            float("nan"),
            ledger.epsilon(),
            f"declined: round {task.server_round} would take epsilon from "
            f"{ledger.epsilon():.4g} past the budget {s.privacy_target_epsilon:g}",
        )
    gen = make_generator(task.seed, secure=s.privacy_secure_rng)
    loader = make_loader(task.data.x_train, task.data.y_train, s.batch_size, gen)
    private = make_private(
        model=task.model,
        optimizer=_optimizer(task),
        data_loader=loader,
        plan=plan,
        max_grad_norm=s.privacy_max_grad_norm,
        generator=gen,
        secure=s.privacy_secure_rng,
        grad_sample_mode=s.privacy_grad_sample_mode,
    )
    start = time.perf_counter()
    stats = train_epochs(
        private.module, private.data_loader, private.optimizer, s.local_epochs, task.device
    )
    seconds = time.perf_counter() - start
    ledger.record(private.event(task.server_round))
    task.ledger.save(ledger)
    weights = {k: v.detach().cpu().numpy().copy() for k, v in private.plain_state_dict().items()}
    return LocalResult(weights, n, stats.loss, ledger.epsilon(), "", seconds)


# The functional mechanism's mode lives in tasks/local_functional.py; importing it registers
# "functional" (at the end: it imports this module's LocalTask, LocalResult, register_mode).
import tasks.local_functional  # noqa: E402, F401
