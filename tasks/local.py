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
import hashlib
import json
import math
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
from privacy.ledger import write_atomically
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

    def __init__(self, delta: float, accountant: str = "pld") -> None:
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
    seed : int
        Derived from the run config's seed; the privacy modes use it for noise **only** when
        ``privacy.reproducible_noise`` is true (no guarantee against whoever knows the
        seed); otherwise every noise draw and sampling mask comes from OS entropy.
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
    budget: float | None = None
    """The epsilon the client's ledger may reach (over every run on its data): the run's
    ``privacy.target_epsilon``, capped by the node's own policy (``max-epsilon``)."""

    @property
    def epsilon_budget(self) -> float:
        """:attr:`budget`, or the run's target when the node sets no cap."""
        return self.settings.privacy_target_epsilon if self.budget is None else self.budget


@dataclass
class LocalResult:
    """What a mode returns: weights (None when declined) and what to report."""

    weights: dict[str, np.ndarray] | None
    num_examples: int
    train_loss: float
    """The raw training loss: computed from private data, so only ``privacy.mode=none`` sets
    it (NaN otherwise, and a NaN is never sent)."""
    epsilon: float
    reason: str = ""
    seconds: float = 0.0
    release: dict[str, np.ndarray] | None = None
    """Functional mechanism with ``privacy.functional_aggregation=objective``: the released
    noisy objectives (:func:`privacy.functional.objectives_to_arrays`), sent beside the
    weights under ``protocol.keys.FM_OBJECTIVES``."""
    train_loss_dp: float = float("nan")
    """A loss computed only from a mechanism's release (post-processing), e.g. the functional
    mechanism's noisy objective at the new weights; sent as ``train-loss-dp``."""


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


def noise_secret(task: LocalTask) -> bool:
    """Whether this task's noise is secret (OS entropy) rather than derived from the seed."""
    return not task.settings.privacy_reproducible_noise


def plan_file(state_dir: Path, partition_id: int) -> Path:
    """Where a client's DP-SGD plans lie on disk: beside its ledger."""
    return state_dir / f"dpsgd-plan-client-{partition_id}.json"


def plan_key(task: LocalTask) -> str:
    """What identifies a plan: the run and every setting its calibration reads but rounds.

    The run is its output directory (the same on resume); ``federation.rounds`` is left out
    so that a resumed run with more rounds finds the plan its released rounds used.
    """
    s = task.settings
    fields = [
        s.output_dir,
        s.privacy_target_epsilon,
        s.training_epsilon,
        s.privacy_delta,
        len(task.data.y_train),
        s.batch_size,
        s.local_epochs,
        s.privacy_accountant,
    ]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def dpsgd_plan(task: LocalTask) -> DpSgdPlan:
    """The client's DP-SGD plan: noise calibrated once for the whole run, then reused.

    Stored in node state and, when the node has a directory, beside the ledger
    (:func:`plan_file`, written atomically), so that it survives restarts and ``resume=``:
    raising ``federation.rounds`` on resume never re-plans the noise of a run whose rounds
    were already released; the extra rounds are declined once the budget is spent.
    """
    key = plan_key(task)
    path = plan_file(task.state_dir, task.partition_id) if task.state_dir is not None else None
    plans: dict[str, Any] = dict(task.state.get("plans", {}))
    if path is not None and path.exists():
        plans.update(json.loads(path.read_text(encoding="utf-8")))
    if key not in plans:
        s = task.settings
        plan = plan_dpsgd(
            target_epsilon=s.training_epsilon,
            delta=s.privacy_delta,
            n_train=len(task.data.y_train),
            batch_size=s.batch_size,
            local_epochs=s.local_epochs,
            rounds=s.num_rounds,
            accountant=s.privacy_accountant,
        )
        plans[key] = dataclasses.asdict(plan)
        if path is not None:
            write_atomically(path, json.dumps(plans, indent=2, sort_keys=True))
    task.state["plans"] = plans
    return DpSgdPlan(**plans[key])


@register_mode("dpsgd")
def train_dpsgd(task: LocalTask) -> LocalResult:
    """Opacus DP-SGD with a sample-level (epsilon, delta) budget over the whole run.

    The noise multiplier is calibrated once (for every round the client may take part in);
    each round's sampled-Gaussian event is appended to the client's persistent ledger, and a
    round that would take the ledger past ``privacy.target_epsilon`` is declined, not run.

    What leaves: the noised weights (the mechanism's output) and public facts (``n``, the
    ledger's epsilon). The raw training loss is not returned (:attr:`LocalResult.train_loss`
    stays NaN). Noise and Poisson masks come from OS entropy, fresh for every session
    (so a round trained twice, e.g. after ``resume=``, gets fresh noise and a second ledger
    event), unless ``privacy.reproducible_noise`` (no guarantee).
    """
    s = task.settings
    plan = dpsgd_plan(task)
    ledger = task.ledger.load()
    n = len(task.data.y_train)
    if would_exceed(ledger, planned_round_event(plan, task.server_round), task.epsilon_budget):
        return LocalResult(
            None,
            n,
            float("nan"),
            ledger.epsilon(),
            f"declined: round {task.server_round} would take epsilon from "
            f"{ledger.epsilon():.4g} past the budget {task.epsilon_budget:g}",
        )
    secure = noise_secret(task)
    gen = make_generator(None if secure else task.seed, secure=secure)
    loader = make_loader(task.data.x_train, task.data.y_train, s.batch_size, gen)
    private = make_private(
        model=task.model,
        optimizer=_optimizer(task),
        data_loader=loader,
        plan=plan,
        max_grad_norm=s.privacy_max_grad_norm,
        generator=gen,
        secure=secure,
        grad_sample_mode=s.privacy_grad_sample_mode,
    )
    start = time.perf_counter()
    train_epochs(
        private.module,
        private.data_loader,
        private.optimizer,
        s.local_epochs,
        task.device,
        empty_step=private.empty_step,
    )
    seconds = time.perf_counter() - start
    ledger.record(private.event(task.server_round))
    task.ledger.save(ledger)
    weights = {k: v.detach().cpu().numpy().copy() for k, v in private.plain_state_dict().items()}
    return LocalResult(weights, n, math.nan, ledger.epsilon(), "", seconds)


# The functional mechanism's mode lives in tasks/local_functional.py; importing it registers
# "functional" (at the end: it imports this module's LocalTask, LocalResult, register_mode).
import tasks.local_functional  # noqa: E402, F401
