"""Local training, the part every privacy mode shares: the task, the result, the ledger store.

A mode (:mod:`privacy.modes`) names its trainer, ``(LocalTask) -> LocalResult``: it takes the
global model and the client's data and returns trained weights plus the client's cumulative
epsilon, or declines when a round would take it past its budget. Trainers know nothing of
Flower: the ClientApp hands them a :class:`LedgerStore` that persists the client's privacy
ledger wherever the node keeps it, and a JSON-able ``state`` dict that it keeps in the
node's state between rounds (the DP-SGD plan, the functional mechanism's noisy objective).
The trainers: :mod:`tasks.training.plain` (``none``), :mod:`tasks.training.dpsgd`,
:mod:`tasks.training.functional`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from privacy import PrivacyLedger, get_mode
from protocol.settings import RunSettings
from tasks.data.partition import ClientData


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


Trainer = Callable[[LocalTask], LocalResult]


def trainer_for(mode_name: str) -> Trainer:
    """The local training of privacy mode ``mode_name`` (:attr:`privacy.PrivacyMode.trainer`).

    A ``"module:function"`` name is imported here, on first use; ``ValueError`` names the
    setting for an unknown mode.
    """
    trainer = get_mode(mode_name).trainer
    if callable(trainer):
        return trainer
    module, _, attr = trainer.partition(":")
    fn: Trainer = getattr(importlib.import_module(module), attr)
    return fn


def train_local(task: LocalTask) -> LocalResult:
    """Run ``task`` under its privacy mode (``task.settings.privacy_mode``)."""
    return trainer_for(task.settings.privacy_mode)(task)


def noise_secret(task: LocalTask) -> bool:
    """Whether this task's noise is secret (OS entropy) rather than derived from the seed."""
    return not task.settings.privacy_reproducible_noise


def sgd(task: LocalTask) -> torch.optim.Optimizer:
    """Plain SGD over the task's model at ``federation.learning_rate``."""
    return torch.optim.SGD(task.model.parameters(), lr=task.settings.learning_rate)
