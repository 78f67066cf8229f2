"""``privacy.mode=dpsgd``: Opacus DP-SGD on the client, with a plan stored beside the ledger."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privacy import make_generator, make_private, plan_dpsgd, planned_round_event, would_exceed
from privacy.dpsgd import DpSgdPlan
from protocol.atomic import write_atomically
from tasks.models.registry import model_info
from tasks.training.local import LocalResult, LocalTask, noise_secret, sgd
from tasks.training.loops import make_loader, train_epochs


def grad_sample_mode(setting: str, model_name: str) -> str:
    """The Opacus mode to run: ``privacy.grad_sample_mode``, or under ``auto`` the model's.

    ``auto`` takes :attr:`tasks.models.registry.ModelInfo.grad_sample_mode`, the fastest exact
    mode measured for ``model.name`` (``bench/dp_overhead.py``). Every mode clips and noises
    the same sum, so the choice changes the speed only, never the plan or the ledger.
    """
    return model_info(model_name).grad_sample_mode if setting == "auto" else setting


def plan_file(state_dir: Path, partition_id: int) -> Path:
    """Where a client's DP-SGD plans lie on disk: beside its ledger."""
    return state_dir / f"dpsgd-plan-client-{partition_id}.json"


def plan_key(task: LocalTask) -> str:
    """What identifies a plan: the run and every setting its calibration reads but rounds.

    The run is its output directory (``output_dir``, :attr:`TrainConfig.run_id
    <tasks.training.local.TrainConfig.run_id>`: the same on resume); ``federation.rounds`` is
    left out so that a resumed run with more rounds finds the plan its released rounds used.
    The fields, their order and their values as given are those of the stored plan files:
    changing any orphans every stored plan (``tests/tasks/training/test_local.py`` pins keys).
    """
    c = task.config
    fields = [
        c.run_id,
        c.target_epsilon,
        c.training_epsilon,
        c.delta,
        len(task.data.y_train),
        c.batch_size,
        c.local_epochs,
        c.accountant,
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
        c = task.config
        plan = plan_dpsgd(
            target_epsilon=c.training_epsilon,
            delta=c.delta,
            n_train=len(task.data.y_train),
            batch_size=c.batch_size,
            local_epochs=c.local_epochs,
            rounds=c.rounds,
            accountant=c.accountant,
        )
        plans[key] = dataclasses.asdict(plan)
        if path is not None:
            write_atomically(path, json.dumps(plans, indent=2, sort_keys=True))
    task.state["plans"] = plans
    return DpSgdPlan(**plans[key])


def train_dpsgd(task: LocalTask, on_private: Callable[[Any], None] | None = None) -> LocalResult:
    """Opacus DP-SGD with a sample-level (epsilon, delta) budget over the whole run.

    The noise multiplier is calibrated once (for every round the client may take part in);
    each round's sampled-Gaussian event is appended to the client's persistent ledger, and a
    round that would take the ledger past ``privacy.target_epsilon`` is declined, not run.

    What leaves: the noised weights (the mechanism's output) and public facts (``n``, the
    ledger's epsilon). The raw training loss is not returned (:attr:`LocalResult.train_loss`
    stays NaN). Noise and Poisson masks come from OS entropy, fresh for every session
    (so a round trained twice, e.g. after ``resume=``, gets fresh noise and a second ledger
    event), unless ``privacy.reproducible_noise`` (no guarantee). ``on_private``, when given, is
    called with the wrapped model, optimizer and loader before training (the audit's canaries).
    """
    c = task.config
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
    loader = make_loader(task.data.x_train, task.data.y_train, c.batch_size, gen)
    private = make_private(
        model=task.model,
        optimizer=sgd(task),
        data_loader=loader,
        plan=plan,
        max_grad_norm=c.max_grad_norm,
        generator=gen,
        secure=secure,
        grad_sample_mode=grad_sample_mode(c.grad_sample_mode, c.model_name),
    )
    if on_private is not None:  # the audit's canary slots (tasks.audit.gradient) only
        on_private(private)
    start = time.perf_counter()
    train_epochs(
        private.module,
        private.data_loader,
        private.optimizer,
        c.local_epochs,
        task.device,
        empty_step=private.empty_step,
        reduce=private.loss,
    )
    seconds = time.perf_counter() - start
    ledger.record(private.event(task.server_round))
    task.ledger.save(ledger)
    weights = {k: v.detach().cpu().numpy().copy() for k, v in private.plain_state_dict().items()}
    return LocalResult(weights, n, math.nan, ledger.epsilon(), "", seconds)
