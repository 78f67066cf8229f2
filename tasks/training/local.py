"""Local training, the part every privacy mode shares: the task, the result, the ledger store.

A mode (:mod:`privacy.modes`) names its trainer, ``(LocalTask) -> LocalResult``: it takes the
global model and the client's data and returns trained weights plus the client's cumulative
epsilon, or declines when a round would take it past its budget. Trainers know nothing of
Flower: the ClientApp hands them a :class:`LedgerStore` that persists the client's privacy
ledger wherever the node keeps it, and a JSON-able ``state`` dict that it keeps in the
node's state between rounds (the DP-SGD plan, the functional mechanism's noisy objective).
The trainers: :mod:`tasks.training.plain` (``none``), :mod:`tasks.training.dpsgd`,
:mod:`tasks.training.functional`.

Trainers read explicit parameters, :class:`TrainConfig`, never the flat run config
(:class:`protocol.settings.RunSettings`), as Opacus's ``make_private`` takes its parameters:
the adapters (the ClientApp, the benchmarks, the tests) convert once, with
:meth:`TrainConfig.from_settings`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from privacy import PrivacyLedger, get_mode
from tasks.data.partition import ClientData

if TYPE_CHECKING:  # the adapter's type only: nothing here reads the flat run config
    from protocol.settings import RunSettings


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


@dataclass(frozen=True)
class TrainConfig:
    """What local training reads of a run, as explicit parameters (one per setting).

    Built by :meth:`from_settings`, the one conversion from the run's settings; the values are
    taken as they are (no coercion), so a DP-SGD plan key (:func:`tasks.training.dpsgd.plan_key`)
    is the same as when the trainers read the settings themselves.

    Attributes
    ----------
    mode : str
        ``privacy.mode``: whose trainer runs (:func:`train_local`).
    learning_rate : float
        ``federation.learning_rate`` (SGD).
    batch_size : int
        ``federation.batch_size`` (the expected batch size under DP-SGD's Poisson sampling).
    local_epochs : int
        ``federation.local_epochs``: passes over the client's data per round.
    rounds : int
        ``federation.rounds``: the rounds DP-SGD's noise is calibrated for.
    target_epsilon : float
        ``privacy.target_epsilon``: the run's budget (the ledger's cap unless the node sets
        its own, :attr:`LocalTask.budget`).
    training_epsilon : float
        The part of ``privacy.target_epsilon`` training may spend: the target less
        ``privacy.eval_epsilon`` per planned evaluation
        (:attr:`protocol.settings.RunSettings.training_epsilon`).
    delta : float
        ``privacy.delta``.
    max_grad_norm : float
        ``privacy.max_grad_norm``: DP-SGD's per-sample clipping norm.
    accountant : str
        ``privacy.accountant``: the accountant DP-SGD calibrates with.
    reproducible_noise : bool
        ``privacy.reproducible_noise``: noise from the seed (no guarantee) instead of OS
        entropy.
    grad_sample_mode : str
        ``privacy.grad_sample_mode``: how Opacus computes per-sample gradients.
    functional_bound : str
        ``privacy.functional_bound``: the functional mechanism's sensitivity bound.
    functional_noise : str
        ``privacy.functional_noise``: ``laplace`` (pure epsilon-DP) or ``gaussian``.
    functional_steps : int
        ``privacy.functional_steps``: gradient steps on the noisy objective (0: closed form).
    release : str
        What a reply releases for the server to combine, one of :data:`privacy.modes.RELEASES`:
        the mode's :attr:`privacy.PrivacyMode.release` of the settings (``objective`` when
        the functional mechanism sends its noisy objectives,
        ``privacy.functional_aggregation=objective``).
    model_name : str
        ``model.name`` (named in the functional mechanism's errors and stored release).
    run_seed : int
        ``seed``: the run's seed (seeds the functional mechanism's noise only under
        ``reproducible_noise``); not :attr:`LocalTask.seed`, derived per client and round.
    run_id : str
        ``output_dir``: what identifies the run in a DP-SGD plan key (the same on resume).
    """

    mode: str
    learning_rate: float
    batch_size: int
    local_epochs: int
    rounds: int
    target_epsilon: float
    training_epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str
    reproducible_noise: bool
    grad_sample_mode: str
    functional_bound: str
    functional_steps: int
    release: str
    model_name: str
    run_seed: int
    run_id: str
    functional_noise: str = "laplace"

    @classmethod
    def from_settings(cls, settings: RunSettings) -> TrainConfig:
        """The training parameters of a run's settings; ``ValueError`` for an unknown mode."""
        return cls(
            mode=settings.privacy_mode,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
            local_epochs=settings.local_epochs,
            rounds=settings.num_rounds,
            target_epsilon=settings.privacy_target_epsilon,
            training_epsilon=settings.training_epsilon,
            delta=settings.privacy_delta,
            max_grad_norm=settings.privacy_max_grad_norm,
            accountant=settings.privacy_accountant,
            reproducible_noise=settings.privacy_reproducible_noise,
            grad_sample_mode=settings.privacy_grad_sample_mode,
            functional_bound=settings.privacy_functional_bound,
            functional_steps=settings.privacy_functional_steps,
            functional_noise=settings.privacy_functional_noise,
            release=get_mode(settings.privacy_mode).release(settings),
            model_name=settings.model_name,
            run_seed=settings.seed,
            run_id=settings.output_dir,
        )


@dataclass
class LocalTask:
    """Everything a mode needs for one round on one client.

    Attributes
    ----------
    config : TrainConfig
        The run's training parameters (:meth:`TrainConfig.from_settings`).
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

    config: TrainConfig
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
        return self.config.target_epsilon if self.budget is None else self.budget


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
    """Run ``task`` under its privacy mode (``task.config.mode``)."""
    return trainer_for(task.config.mode)(task)


def noise_secret(task: LocalTask) -> bool:
    """Whether this task's noise is secret (OS entropy) rather than derived from the seed."""
    return not task.config.reproducible_noise


def sgd(task: LocalTask) -> torch.optim.Optimizer:
    """Plain SGD over the task's model at ``federation.learning_rate``."""
    return torch.optim.SGD(task.model.parameters(), lr=task.config.learning_rate)
