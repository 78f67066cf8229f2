"""Personal fine-tuning: a copy trains, the global model it starts from is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.data import ClientData
from tasks.models import ModelSpec, build_model, get_weights
from tasks.training.personal import PersonalConfig, last_layer, personalise, train_alone


def _data(n: int = 64) -> ClientData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6, 32)).astype(np.float32)
    y = (x[:, 0].mean(axis=1) > 0).astype(np.int64)
    return ClientData(x, y, x[:8], y[:8], (6, 32), 2)


def _model() -> torch.nn.Module:
    return build_model(ModelSpec("cnn1d", (6, 32), 2, 8), seed=0)


@pytest.mark.parametrize("mode", ["finetune", "last_layer"])
def test_personalise_trains_a_copy_and_leaves_the_global_model(mode: str) -> None:
    model = _model()
    before = get_weights(model)
    personal = personalise(model, _data(), PersonalConfig(mode, 2, 0.1, 16), torch.device("cpu"), 3)
    for key, value in get_weights(model).items():
        assert np.array_equal(value, before[key]), key  # the global model is untouched
    after = get_weights(personal)
    changed = {k for k in after if not np.array_equal(after[k], before[k])}
    head = {f"{name}" for name, _ in personal.named_parameters() if name.startswith("12.")}
    if mode == "finetune":
        assert changed > head  # more than the last layer moved
    else:
        assert changed == head == {"12.weight", "12.bias"}
    assert all(p.requires_grad for p in personal.parameters())


def test_personalise_is_deterministic_from_seed_and_client() -> None:
    config = PersonalConfig("finetune", 1, 0.1, 16, seed=5)
    a = get_weights(personalise(_model(), _data(), config, torch.device("cpu"), 1))
    b = get_weights(personalise(_model(), _data(), config, torch.device("cpu"), 1))
    c = get_weights(personalise(_model(), _data(), config, torch.device("cpu"), 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_local_only_trains_every_layer() -> None:
    model = _model()
    alone = train_alone(
        model, _data(), PersonalConfig("last_layer", 1, 0.1, 16), torch.device("cpu"), 0
    )
    before, after = get_weights(model), get_weights(alone)
    assert not np.array_equal(before["1.weight"], after["1.weight"])


def test_last_layer_is_the_output_layer() -> None:
    model = _model()
    assert last_layer(model) is model[12]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"epochs": 0}, "personalization.epochs must be > 0, got 0"),
        ({"epochs": -1}, "personalization.epochs must be > 0, got -1"),
        ({"learning_rate": 0.0}, "personalization.learning_rate must be > 0, got 0"),
        ({"mode": "none"}, "personalization.mode must be one of ['finetune', 'last_layer']"),
    ],
)
def test_config_errors_name_the_setting(kw: dict, message: str) -> None:
    args = {"mode": "finetune", "epochs": 1, "learning_rate": 0.1, "batch_size": 8} | kw
    with pytest.raises(ValueError) as err:
        PersonalConfig(**args)
    assert message in str(err.value)
