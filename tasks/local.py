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
import json
import os
import tempfile
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
    PureDpEvent,
    derive_seed,
    make_generator,
    make_private,
    plan_dpsgd,
    planned_round_event,
    would_exceed,
)
from privacy.dpsgd import DpSgdPlan
from privacy.functional import (
    FunctionalMechanism,
    QuadraticObjective,
    default_ridge,
    gradient_steps,
    make_noise_generator,
    minimise,
    objectives_to_arrays,
    stabilise,
)
from protocol.settings import RunSettings
from tasks.models import FUNCTIONAL_MODELS, FunctionalModel, get_weights
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


# ------------------------------------------------------------------ functional mechanism
FUNCTIONAL_KEY = "functional"
"""Key of the noisy objectives in :attr:`LocalTask.state` (and name of the file on disk)."""
FUNCTIONAL_VERSION = 1


FUNCTIONAL_KINDS = {"logistic": "logistic", "fm_network": "logistic", "linear": "linear"}
"""The objective kind (:data:`privacy.functional.OBJECTIVES`) of each functional model; a test
keeps it equal to the models' ``objective_kind`` (the server needs it without a model)."""
FUNCTIONAL_HEAD = "head.weight"
"""The weights entry the functional mechanism trains (``FunctionalModel.head``)."""


def functional_mechanism(settings: RunSettings, kind: str, outputs: int) -> FunctionalMechanism:
    """The mechanism of one head row: one-vs-rest heads share ``privacy.target_epsilon``."""
    return FunctionalMechanism(
        epsilon=settings.privacy_target_epsilon / outputs,
        kind=kind,
        bound=settings.privacy_functional_bound,
    )


def functional_noise_scale(settings: RunSettings, dim: int, outputs: int) -> float:
    """Laplace scale ``Delta/epsilon`` every client of this run used (public; for the server)."""
    if settings.model_name not in FUNCTIONAL_KINDS:
        raise ValueError(
            f"privacy.mode='functional' supports model.name in {sorted(FUNCTIONAL_KINDS)}, "
            f"got {settings.model_name!r}"
        )
    kind = FUNCTIONAL_KINDS[settings.model_name]
    return functional_mechanism(settings, kind, outputs).noise_scale(dim)


def functional_model(task_model: nn.Module, model_name: str) -> FunctionalModel:
    """The model as a :class:`FunctionalModel`; ``ValueError`` names the supported models."""
    if not isinstance(task_model, FunctionalModel):
        raise ValueError(
            f"privacy.mode='functional' supports model.name in {sorted(FUNCTIONAL_MODELS)}, "
            f"got {model_name!r}"
        )
    return task_model


def functional_file(state_dir: Path, partition_id: int) -> Path:
    """Where a client's noisy objectives lie on disk: beside its ledger."""
    return state_dir / f"{FUNCTIONAL_KEY}-client-{partition_id}.json"


def _write_atomically(path: Path, text: str) -> None:
    """Temporary file in the same directory, fsync, ``os.replace``: old or new, never torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_release(task: LocalTask) -> dict[str, Any] | None:
    """The stored release: the file on disk wins (it survives restarts), else node state."""
    path = (
        functional_file(task.state_dir, task.partition_id) if task.state_dir is not None else None
    )
    release: dict[str, Any] | None = None
    if path is not None and path.exists():
        release = json.loads(path.read_text(encoding="utf-8"))
    elif FUNCTIONAL_KEY in task.state:
        release = task.state[FUNCTIONAL_KEY]
        if path is not None:  # the file went missing: put the release back beside the ledger
            _write_atomically(path, json.dumps(release))
    if release is not None:
        task.state[FUNCTIONAL_KEY] = release
    return release


def _check_release(release: dict[str, Any], expected: dict[str, Any]) -> None:
    """A stored release must match this run's mechanism; reusing another one is an error."""
    for key, value in expected.items():
        if release.get(key) != value:
            raise ValueError(
                f"the stored functional-mechanism release has {key}={release.get(key)!r} but this "
                f"run has {value!r}; it was drawn for another configuration (remove it only if "
                "its budget is accounted for elsewhere)"
            )


@register_mode("functional")
def train_functional(task: LocalTask) -> LocalResult:
    """The functional mechanism: one noisy objective per client dataset, minimised every round.

    First round of a client: build the exact objective of the model's trainable head on its
    training data (records normalised by the dataset's public bounds), add
    ``Laplace(Delta/epsilon)`` noise once (Zhang et al. 2012, Algorithm 1; one-vs-rest heads
    share ``epsilon`` equally), record ONE :class:`PureDpEvent` of ``epsilon =
    privacy.target_epsilon`` in the ledger, then keep the noisy objectives in the client's
    state and beside the ledger on disk (ledger first: a crash in between over-counts, never
    under-counts). Every round (the first included): stabilise the same noisy objectives
    and move from the received global weights to their minimiser (closed form, or
    ``privacy.functional_steps`` gradient steps). Only post-processing after the draw, so
    epsilon stays at ``privacy.target_epsilon`` however many rounds run.

    With ``privacy.functional_aggregation=objective`` the result also carries the noisy
    objectives themselves (:attr:`LocalResult.release`), the same every round: they are the
    mechanism's epsilon-DP output, so releasing them is covered by the one ledger event
    (see :mod:`privacy.functional_aggregate`), and the server sums and minimises them.

    If the stored objectives are lost (node state and disk), a new draw is a new release: it
    is recorded as a second event, and declined when that would exceed the budget.
    """
    s = task.settings
    model = functional_model(task.model, s.model_name)
    n = len(task.data.y_train)
    outputs = model.head.out_features
    dim = model.head.in_features
    mech = functional_mechanism(s, model.objective_kind, outputs)
    expected = {
        "version": FUNCTIONAL_VERSION,
        "model": s.model_name,
        "kind": mech.kind,
        "bound": mech.bound,
        "epsilon": float(s.privacy_target_epsilon),
        "dim": dim,
        "outputs": outputs,
        "num_examples": n,
    }
    start = time.perf_counter()
    release = _load_release(task)
    if release is None:
        ledger = task.ledger.load()
        event = PureDpEvent(epsilon=float(s.privacy_target_epsilon), round=task.server_round)
        if ledger.epsilon_if(event) > s.privacy_target_epsilon * (1 + 1e-9):
            return LocalResult(
                None,
                n,
                float("nan"),
                ledger.epsilon(),
                f"declined: no stored functional-mechanism objective, and a new noise draw "
                f"would take epsilon from {ledger.epsilon():.4g} past the budget "
                f"{s.privacy_target_epsilon:g}",
            )
        feats = model.fm_features(task.data.x_train)
        targets = model.fm_targets(task.data.y_train)
        generator = make_noise_generator(
            derive_seed(s.seed, task.partition_id, 0xF0C7), secure=s.privacy_secure_rng
        )
        noisy = [mech.perturb(mech.objective(feats, t), generator) for t in targets]
        ledger.record(event)
        task.ledger.save(ledger)  # the spend is on record before anything uses the draw
        release = {
            **expected,
            "round": task.server_round,
            "objectives": [o.to_dict() for o in noisy],
        }
        task.state[FUNCTIONAL_KEY] = release
        if task.state_dir is not None:
            _write_atomically(
                functional_file(task.state_dir, task.partition_id), json.dumps(release)
            )
    _check_release(release, expected)
    stored: list[dict[str, Any]] = release["objectives"]
    objectives = [QuadraticObjective.from_dict(o) for o in stored]
    ridge = default_ridge(mech, dim)
    start_weights = model.head.weight.detach().cpu().double().numpy()
    rows = []
    for k, objective in enumerate(objectives):
        if s.privacy_functional_steps == 0:
            rows.append(minimise(objective, ridge=ridge))
        else:
            stable = stabilise(objective, ridge=ridge)
            rows.append(gradient_steps(stable, start_weights[k], steps=s.privacy_functional_steps))
    head = np.stack(rows)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(head, dtype=model.head.weight.dtype))
    # Reported loss: the noisy objectives at the new weights, per example (post-processing).
    # Their constant is not released, so this is the loss relative to the all-zero model's.
    loss = sum(o.value(w) for o, w in zip(objectives, rows, strict=True)) / max(n, 1)
    seconds = time.perf_counter() - start
    # The released objectives are the epsilon-DP output itself: sending them is no new spend.
    release = (
        objectives_to_arrays(objectives)
        if s.privacy_functional_aggregation == "objective"
        else None
    )
    return LocalResult(
        get_weights(model), n, float(loss), task.ledger.load().epsilon(), "", seconds, release
    )
