"""Local training modes (tasks/training/) on real digits data with real Opacus."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from protocol.settings import GRAD_SAMPLE_MODES, RunSettings
from tasks.data import ClientData, load_client_data, specs_from_settings
from tasks.models import ModelSpec, build_model
from tasks.training import LocalTask, MemoryLedgerStore, TrainConfig, trainer_for
from tasks.training.dpsgd import plan_key

SETTINGS = RunSettings(num_clients=3, num_rounds=2, privacy_target_epsilon=2.0, batch_size=32)


def make_task(settings: RunSettings, rnd: int, store: MemoryLedgerStore, cache: dict) -> LocalTask:
    dspec, pspec = specs_from_settings(settings)
    data = load_client_data(dspec, pspec, 0, settings.val_fraction)
    model = build_model(ModelSpec(settings.model_name, data.input_shape, data.num_classes), 0)
    config = TrainConfig.from_settings(settings)
    return LocalTask(config, data, model, torch.device("cpu"), rnd, 1000 + rnd, store, cache, 0)


def test_dpsgd_spends_cumulatively_then_declines_past_budget() -> None:
    store, cache = MemoryLedgerStore(SETTINGS.privacy_delta), {}
    mode = trainer_for("dpsgd")
    r1 = mode(make_task(SETTINGS, 1, store, cache))
    plans = dict(cache["plans"])
    assert len(plans) == 1
    r2 = mode(make_task(SETTINGS, 2, store, cache))
    assert cache["plans"] == plans  # calibrated once, reused
    assert r1.weights is not None and r2.weights is not None
    assert 0 < r1.epsilon < r2.epsilon <= SETTINGS.privacy_target_epsilon
    assert store.saves == 2 and len(store.ledger.events) == 2
    # a third round was not planned: it would overspend, so the client declines
    r3 = mode(make_task(SETTINGS, 3, store, cache))
    assert r3.weights is None
    assert "declined" in r3.reason and "budget" in r3.reason
    assert r3.epsilon == pytest.approx(r2.epsilon)
    assert len(store.ledger.events) == 2 and store.saves == 2


def test_every_grad_sample_mode_computes_the_same_dp_sgd_and_ledger() -> None:
    results, events = {}, {}
    for mode_name in GRAD_SAMPLE_MODES:  # the same seeded noise: reproducible_noise
        settings = dataclasses.replace(
            SETTINGS, privacy_grad_sample_mode=mode_name, privacy_reproducible_noise=True
        )
        store = MemoryLedgerStore(settings.privacy_delta)
        results[mode_name] = trainer_for("dpsgd")(make_task(settings, 1, store, {}))
        events[mode_name] = store.ledger.to_json()
    a = results["hooks"].weights
    assert a is not None
    for mode_name, result in results.items():
        # accounting untouched: the same events (noise multiplier, sample rate, steps)
        assert events[mode_name] == events["hooks"], mode_name
        assert result.epsilon == results["hooks"].epsilon
        b = result.weights
        assert b is not None
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=mode_name)


def test_no_privacy_mode_reports_infinite_epsilon_and_trains() -> None:
    settings = dataclasses.replace(SETTINGS, privacy_mode="none")
    task = make_task(settings, 1, MemoryLedgerStore(settings.privacy_delta), {})
    before = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    result = trainer_for("none")(task)
    assert result.epsilon == float("inf")
    assert result.weights is not None
    assert any(not np.allclose(result.weights[k], before[k].numpy()) for k in before)


def test_unknown_mode_names_the_setting() -> None:
    with pytest.raises(ValueError, match="privacy.mode must be one of"):
        trainer_for("magic")


# ---------------------------------------------------------------------- DP-SGD plan keys
PLAN_KEYS = [
    (RunSettings(), 100, "05c3a391096847e6"),
    (
        RunSettings(
            output_dir="/runs/a",
            privacy_target_epsilon=2.0,
            privacy_delta=1e-6,
            batch_size=32,
            local_epochs=2,
            num_rounds=5,
            privacy_eval_epsilon=0.1,
            fraction_evaluate=0.5,
        ),
        357,
        "57dfd195252b4cb7",
    ),
    (
        RunSettings(
            output_dir="out/x", privacy_accountant="rdp", privacy_target_epsilon=8, num_rounds=3
        ),
        1000,
        "b18323e2b644fdfc",
    ),
]
"""Keys computed when the trainers still read the run's settings: stored plan files use them."""


def _tiny_task(settings: RunSettings, n: int) -> LocalTask:
    x, y = np.zeros((n, 4), np.float32), np.zeros(n, np.int64)
    data = ClientData(x, y, x[:1], y[:1], (4,), 2)
    config = TrainConfig.from_settings(settings)
    store = MemoryLedgerStore(settings.privacy_delta)
    return LocalTask(config, data, torch.nn.Linear(4, 2), torch.device("cpu"), 1, 0, store, {}, 0)


def _key_from_settings(settings: RunSettings, n: int) -> str:
    """The plan key as it was computed from the settings before :class:`TrainConfig`."""
    fields = [
        settings.output_dir,
        settings.privacy_target_epsilon,
        settings.training_epsilon,
        settings.privacy_delta,
        n,
        settings.batch_size,
        settings.local_epochs,
        settings.privacy_accountant,
    ]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("settings", "n", "key"), PLAN_KEYS)
def test_plan_keys_are_unchanged_by_the_explicit_config(
    settings: RunSettings, n: int, key: str
) -> None:
    assert plan_key(_tiny_task(settings, n)) == key == _key_from_settings(settings, n)
    # federation.rounds is not part of the key: a resumed run with more rounds finds its plan
    # (unless evaluations are planned, which take their epsilon from training's every round)
    more = dataclasses.replace(settings, num_rounds=settings.num_rounds + 4)
    assert (plan_key(_tiny_task(more, n)) == key) == (settings.evaluations_planned == 0)
