"""Contract tests over every registered privacy mode, and a new mode added by one registration.

Every mode in :data:`privacy.MODES` must: declare consistent properties, name a trainer that
resolves, train one round on real data through :func:`tasks.training.train_local`, and then
report an epsilon its ledger backs (private modes) or ``inf`` (``none``). The server picks
its aggregation from the mode's release; the settings checks use its properties.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from experiments.config import check_data
from fl_client.policy import NodePolicy, private_modes
from fl_server.registry import make_strategy
from fl_server.weighted import WeightedFedAvg
from privacy import MODES, PrivacyMode, get_mode, is_private, register_mode
from privacy.modes import RELEASES, unregister_mode
from protocol.settings import RunSettings
from tasks.data import load_client_data, specs_from_settings
from tasks.models import ModelSpec, build_model, get_weights, models_with
from tasks.training import (
    LocalResult,
    LocalTask,
    MemoryLedgerStore,
    TrainConfig,
    train_local,
    trainer_for,
)


def settings_for(mode: PrivacyMode) -> RunSettings:
    """Small settings the mode can serve: digits/mlp, or Adult/logistic for objective models."""
    base = RunSettings(
        num_clients=3,
        num_rounds=2,
        privacy_mode=mode.name,
        privacy_target_epsilon=4.0,
        batch_size=32,
    )
    if mode.model_capability:
        model = sorted(models_with(mode.model_capability))[0]
        dataset = "wage" if model == "linear" else "adult"
        return dataclasses.replace(base, dataset_name=dataset, model_name=model, num_clients=10)
    return base


def task_for(settings: RunSettings, store: MemoryLedgerStore) -> LocalTask:
    dspec, pspec = specs_from_settings(settings)
    data = load_client_data(dspec, pspec, 0, settings.val_fraction)
    spec = ModelSpec(
        settings.model_name, data.input_shape, data.num_classes, 8, settings.dataset_name
    )
    model = build_model(spec, 0)
    config = TrainConfig.from_settings(settings)
    return LocalTask(config, data, model, torch.device("cpu"), 1, 7, store, {}, 0)


@pytest.mark.parametrize("name", sorted(MODES))
def test_properties_are_consistent(name: str) -> None:
    mode = get_mode(name)
    assert mode.name == name and mode.summary
    assert not (mode.delta_spent(settings_for(mode)) and not mode.private)  # delta is a DP quantity
    assert mode.release(settings_for(mode)) in RELEASES
    assert callable(trainer_for(name))
    if mode.model_capability:
        assert models_with(mode.model_capability), "no registered model can serve this mode"
    assert is_private(name) == mode.private


@pytest.mark.parametrize("name", sorted(MODES))
def test_one_round_through_the_registry(name: str) -> None:
    mode = get_mode(name)
    settings = settings_for(mode)
    settings.validate()
    check_data(settings)  # the mode's own checks included
    store = MemoryLedgerStore(settings.privacy_delta)
    result = train_local(task_for(settings, store))
    assert isinstance(result, LocalResult) and result.weights is not None
    assert all(np.isfinite(v).all() for v in result.weights.values())
    if mode.private:
        assert store.ledger.events, "a private mode must record what it released"
        assert 0 < result.epsilon <= settings.training_epsilon * (1 + 1e-9)
        assert result.epsilon == pytest.approx(store.ledger.epsilon())
        assert math.isnan(result.train_loss)  # raw statistics never leave under DP
    else:
        assert result.epsilon == math.inf and not store.ledger.events
    assert isinstance(make_strategy(settings), WeightedFedAvg)


def test_unknown_mode_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"privacy\.mode must be one of .* got 'magic'"):
        get_mode("magic")
    with pytest.raises(ValueError, match=r"privacy\.mode must be one of"):
        check_data(RunSettings(privacy_mode="magic"))


def _train_scaled(task: LocalTask) -> LocalResult:
    """A toy non-private mode: halves the global weights (no data read)."""
    weights = {k: v * 0.5 for k, v in get_weights(task.model).items()}
    return LocalResult(weights, len(task.data.y_train), math.nan, math.inf)


@pytest.fixture
def halve_mode() -> Iterator[PrivacyMode]:
    mode = register_mode(
        PrivacyMode(
            name="halve",
            summary="test mode: halves the weights",
            private=False,
            spends_delta=False,
            trainer=_train_scaled,
        )
    )
    yield mode
    unregister_mode("halve")
    assert "halve" not in MODES


def test_a_new_mode_is_one_registration(halve_mode: PrivacyMode) -> None:
    settings = dataclasses.replace(RunSettings(num_clients=3), privacy_mode="halve")
    settings.validate()
    check_data(settings)
    task = task_for(settings, MemoryLedgerStore(settings.privacy_delta))
    before = get_weights(task.model)
    result = train_local(task)
    assert result.weights is not None
    for key, value in before.items():
        np.testing.assert_allclose(result.weights[key], value * 0.5)
    assert isinstance(make_strategy(settings), WeightedFedAvg)
    # properties flow through: not private, so a node's default policy does not allow it
    assert "halve" not in private_modes()
    policy = NodePolicy(max_epsilon=1.0, owned=True)
    assert "node policy allows" in policy.refuse_train(settings, 100)


def test_registering_a_different_mode_under_a_taken_name_is_refused() -> None:
    taken = get_mode("dpsgd")
    with pytest.raises(ValueError, match="already registered"):
        register_mode(dataclasses.replace(taken, summary="another"))
    assert get_mode("dpsgd") is taken
