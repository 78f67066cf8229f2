"""The functional mechanism as a privacy mode of local training (``privacy.mode=functional``).

Named by the ``functional`` mode (:mod:`privacy.functional`) as its trainer. One noisy
release per client dataset (Zhang et al. 2012, Algorithm 1), kept in the client's node
state and beside its ledger on disk, minimised from the global weights every round. What is
released and how it is solved is the model's objective kind's
(:data:`privacy.functional.HEAD_KINDS`): per-row quadratic objectives (``linear``,
``logistic``) or one softmax release for all classes (``softmax``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privacy import derive_seed
from privacy.functional import (
    FunctionalMechanism,
    functional_noise,
    head_kind,
    head_mechanism,
    make_noise_generator,
)
from protocol.atomic import write_atomically
from tasks.models.functional import FunctionalModel
from tasks.models.registry import get_weights, models_with
from tasks.training.local import LocalResult, LocalTask, TrainConfig

FUNCTIONAL_KEY = "functional"
"""Key of the noisy objectives in :attr:`LocalTask.state` (and name of the file on disk)."""
FUNCTIONAL_VERSION = 2
"""Version 2 stores the release as named arrays (``arrays``), whatever the objective kind."""


def functional_mechanism(config: TrainConfig, kind: str, outputs: int) -> FunctionalMechanism:
    """The mechanism of one row of a per-row head (``linear``, ``logistic``): rows share epsilon.

    ``config`` gives the epsilon (:attr:`TrainConfig.training_epsilon`) and the sensitivity
    bound (``privacy.functional_bound``).
    """
    return head_mechanism(config.training_epsilon, kind, config.functional_bound, outputs)


def functional_model(task_model: nn.Module, model_name: str) -> FunctionalModel:
    """The model as a :class:`FunctionalModel`; ``ValueError`` names the supported models."""
    if not isinstance(task_model, FunctionalModel):
        raise ValueError(
            f"privacy.mode='functional' supports model.name in {sorted(models_with('objective'))}, "
            f"got {model_name!r}"
        )
    return task_model


def functional_file(state_dir: Path, partition_id: int) -> Path:
    """Where a client's noisy objectives lie on disk: beside its ledger."""
    return state_dir / f"{FUNCTIONAL_KEY}-client-{partition_id}.json"


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
            write_atomically(path, json.dumps(release))
    if release is not None:  # a version-1 release (no noise/delta keys) fails _check_release
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


def train_functional(task: LocalTask) -> LocalResult:
    """The functional mechanism: one noisy objective per client dataset, minimised every round.

    First round of a client: build the exact objective of the model's trainable head on its
    training data (records the model's public feature map puts in the L2 unit ball), add
    ``Laplace(Delta/epsilon)`` noise once (Zhang et al. 2012, Algorithm 1; the head kind's
    release: per-row objectives share ``epsilon``, the softmax head releases all classes at
    once; or, with ``privacy.functional_noise=gaussian``, the analytic Gaussian at the L2
    sensitivity), record ONE ledger event (the head kind's :meth:`HeadKind.event`: a
    :class:`PureDpEvent` of ``epsilon = privacy.target_epsilon``, or one sampled-Gaussian
    event whose epsilon at ``privacy.delta`` is at most that) in the ledger, then keep the
    noisy objectives in the client's state and beside the ledger on disk (ledger first: a
    crash in between over-counts, never under-counts). Every round (the first included):
    stabilise the same noisy release and move from the received global weights to its
    minimiser (closed form, or ``privacy.functional_steps`` gradient steps). Only
    post-processing after the draw, so epsilon stays at ``privacy.target_epsilon`` however
    many rounds run.

    With ``privacy.functional_aggregation=objective`` the result also carries the noisy
    objectives themselves (:attr:`LocalResult.release`), the same every round: they are the
    mechanism's epsilon-DP output, so releasing them is covered by the one ledger event
    (see :mod:`privacy.functional.aggregate`), and the server sums and minimises them.

    If the stored objectives are lost (node state and disk), a new draw is a new release: it
    is recorded as a second event, and declined when that would exceed the budget.
    """
    c = task.config
    model = functional_model(task.model, c.model_name)
    n = len(task.data.y_train)
    outputs = model.head.out_features
    dim = model.head.in_features
    kind = head_kind(model.objective_kind)
    expected = {
        "version": FUNCTIONAL_VERSION,
        "model": c.model_name,
        "kind": kind.name,
        "bound": c.functional_bound,
        "noise": c.functional_noise,
        "delta": float(c.delta) if functional_noise(c.functional_noise).spends_delta else 0.0,
        "epsilon": float(c.training_epsilon),
        "dim": dim,
        "outputs": outputs,
        "num_examples": n,
    }
    start = time.perf_counter()
    release = _load_release(task)
    if release is None:
        ledger = task.ledger.load()
        event = kind.event(
            float(c.training_epsilon), task.server_round, noise=c.functional_noise, delta=c.delta
        )
        if ledger.epsilon_if(event) > task.epsilon_budget * (1 + 1e-9):
            return LocalResult(
                None,
                n,
                float("nan"),
                ledger.epsilon(),
                f"declined: no stored functional-mechanism objective, and a new noise draw "
                f"would take epsilon from {ledger.epsilon():.4g} past the budget "
                f"{task.epsilon_budget:g}",
            )
        feats = model.fm_features(task.data.x_train)
        targets = model.fm_targets(task.data.y_train)
        # Secret by default: OS entropy (CSPRNG), never the run seed; see make_noise_generator.
        generator = make_noise_generator(
            derive_seed(c.run_seed, task.partition_id, 0xF0C7), secure=not c.reproducible_noise
        )
        noisy = kind.release(
            feats,
            targets,
            float(c.training_epsilon),
            c.functional_bound,
            generator,
            noise=c.functional_noise,
            delta=c.delta,
        )
        ledger.record(event)
        task.ledger.save(ledger)  # the spend is on record before anything uses the draw
        release = {
            **expected,
            "round": task.server_round,
            "arrays": {k: np.asarray(v).tolist() for k, v in noisy.items()},
        }
        task.state[FUNCTIONAL_KEY] = release
        if task.state_dir is not None:
            write_atomically(
                functional_file(task.state_dir, task.partition_id), json.dumps(release)
            )
    _check_release(release, expected)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in release["arrays"].items()}
    start_weights = model.head.weight.detach().cpu().double().numpy()
    head = kind.local_head(
        arrays,
        float(c.training_epsilon),
        c.functional_bound,
        start_weights,
        c.functional_steps,
        noise=c.functional_noise,
        delta=c.delta,
    )
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(head, dtype=model.head.weight.dtype))
    # Reported loss: the noisy objective at the new weights, per example (post-processing).
    # Its constant is not released, so this is the loss relative to the all-zero model's.
    loss = kind.loss(arrays, head) / max(n, 1)
    seconds = time.perf_counter() - start
    # The release is the epsilon-DP output itself: sending it is no new spend.
    sent = arrays if c.release == "objective" else None
    return LocalResult(
        get_weights(model),
        n,
        float("nan"),
        task.ledger.load().epsilon(),
        "",
        seconds,
        sent,
        train_loss_dp=float(loss),
    )
